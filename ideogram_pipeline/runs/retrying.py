"""The one retry for storage: outages are waited out, programming errors fail at once.

Every storage call the engine makes around paid work (an image upload, a ledger entry)
goes through :func:`retry_storage`. It retries only what means the store or the network is
unavailable (:func:`is_storage_outage`): a :class:`StorageError` from a store (boto3's
errors arrive translated, after boto3's own retries) and an ``OSError`` (refused, reset,
timed out), but never a full disk. Anything else, a ``TypeError`` or a ``KeyError``, is a
bug: it is raised on the first try with its own traceback, never hidden behind a minute of
backoff.

Built on ``tenacity`` (maintained, async-aware) rather than a loop of our own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from ideogram_pipeline.storage import ObjectExists, StorageError
from ideogram_pipeline.storage.space import no_space_left

__all__ = ["STORAGE_RETRY", "StorageRetry", "is_storage_outage", "retry_storage"]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class StorageRetry:
    """How long a storage outage is waited out: ``attempts`` tries in all, the waits
    doubling from ``first_delay_s`` up to ``max_delay_s``."""

    attempts: int = 8
    first_delay_s: float = 0.5
    max_delay_s: float = 15.0


#: About a minute of outage (an S3 endpoint restarting) is waited out, on top of boto3's
#: own retries: the image is paid for and in memory, so giving up early would waste it.
STORAGE_RETRY = StorageRetry()


def is_storage_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the store or the network is unavailable (worth waiting out).

    :class:`ObjectExists` is not: other bytes already at the key will still be there. Nor
    is a full disk (:mod:`~ideogram_pipeline.storage.space`): it stays full until someone
    frees space, so the run stops at once instead of waiting a minute per image.
    """
    if isinstance(exc, ObjectExists) or no_space_left(exc, "") is not None:
        return False
    return isinstance(exc, StorageError | OSError)


async def retry_storage(
    call: Callable[[], Awaitable[T]],
    *,
    policy: StorageRetry = STORAGE_RETRY,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Await ``call()`` until it succeeds, retrying storage outages only.

    ``on_retry`` sees each error that is retried (to count it, or note it on the record).
    After the last attempt the last error is raised as it was.
    """

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(error)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.first_delay_s, max=policy.max_delay_s),
        retry=retry_if_exception(is_storage_outage),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:
        # A coroutine function, so tenacity awaits each try (a plain callable returning an
        # awaitable would be called and its awaitable returned unawaited).
        return await call()

    return await retrying(attempt)

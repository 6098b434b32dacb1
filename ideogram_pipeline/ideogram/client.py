"""Async Ideogram client: one place for HTTP, retries, the in-flight limit and error mapping.

The API key is sent only in the ``Api-Key`` header. httpx never puts headers into exception
messages, and our own errors are built from status codes and bodies, so the key cannot leak
into logs or metadata through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx

from ideogram_pipeline.ideogram.downloads import fetch_image
from ideogram_pipeline.ideogram.errors import (
    GenerationFailed,
    IdeogramError,
    ImageUnreadable,
    RateLimited,
    ResponseLost,
    TransportError,
    error_for_status,
)
from ideogram_pipeline.ideogram.generation import (
    V2_ONLY_MODELS,
    GenerationRequest,
    GenerationResponse,
)
from ideogram_pipeline.ideogram.limiter import InflightLimiter
from ideogram_pipeline.ideogram.operation_requests import operation_parts, operation_path
from ideogram_pipeline.ideogram.polling import (
    DEFAULT_POLL_RATE_PER_S,
    LatencyTracker,
    PollBudget,
    next_interval,
)
from ideogram_pipeline.ideogram.requests import (
    LEGACY_PATH,
    V2_GENERATIONS_PATH,
    legacy_body,
    v2_body,
    v2_multipart,
    v2_path,
    v3_multipart,
    v3_path,
)
from ideogram_pipeline.ideogram.stop import SendsStopped, StopSwitch
from ideogram_pipeline.ideogram.submit_channel import ChannelGone, SubmitChannel, SubmitLines
from ideogram_pipeline.ideogram.url_policy import UrlPolicy

__all__ = ["LAST_RETRY_ERROR", "IdeogramClient", "RetryPolicy", "translate_transport_errors"]

T = TypeVar("T")
#: Polls per second across the whole client (see ``polling.py``): Ideogram allows 1,000 per
#: 10 s per organisation, and other processes may poll too.
POLL_RATE_PER_S = DEFAULT_POLL_RATE_PER_S
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, so many workers do not retry in lockstep."""

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    #: 429 ``inflight_limit`` only says "wait": it is never billed and the request never
    #: ran, so a storm is waited out far longer than other failures before a row fails.
    max_rate_limited_attempts: int = 60

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay_s)
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)


@contextlib.contextmanager
def translate_transport_errors(*, paid_request: bool = False) -> Iterator[None]:
    """The single choke point where httpx exceptions become our :class:`TransportError`.

    With ``paid_request``, a failure after the request was sent (read timeout, dropped
    connection) becomes :class:`ResponseLost`: Ideogram may have run and billed it, so
    sending it again could pay twice. Failures before sending stay retryable.
    """
    try:
        yield
    except _ANSWER_LOST as exc:
        if paid_request:
            raise ResponseLost(
                f"the request was sent but no answer arrived ({type(exc).__name__}); "
                "Ideogram may have run and billed it"
            ) from exc
        raise TransportError(f"connection failed: {type(exc).__name__}: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise TransportError(f"timed out: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        raise TransportError(f"connection failed: {type(exc).__name__}: {exc}") from exc


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


#: httpx errors raised after the request left: the server may have acted on it.
_ANSWER_LOST = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteTimeout)

RetryCallback = Callable[[IdeogramError, int], None]
#: The last error that was retried in the current task (one row's work runs in one task),
#: so the engine can record why a row that finally succeeded needed more than one try.
LAST_RETRY_ERROR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "LAST_RETRY_ERROR", default=None
)
BeforeSend = Callable[[], Awaitable[None]]
#: Called on the submitting thread itself (see :meth:`IdeogramClient.generate_async`):
#: quick, thread-safe, and never touching the event loop except through
#: ``loop.call_soon_threadsafe``.
OnIntent = Callable[[], None]
OnSubmitted = Callable[[str], None]
#: Submissions are quick (Ideogram answers with an id in milliseconds), so a few threads
#: carry any in-flight limit.
SUBMIT_THREADS = 8


class IdeogramClient:
    """Generate and download images with bounded concurrency and retries.

    ``max_inflight`` is the account's image limit; ``retry`` governs 429, 5xx and transport
    failures. 400/401/402/403/422 are never retried. ``on_retry`` is told of every retry so
    the engine can count retries by cause.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_inflight: int = 10,
        retry: RetryPolicy | None = None,
        generate_timeout_s: float = 300.0,
        download_timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: RetryCallback | None = None,
        url_policy: UrlPolicy | None = None,
        poll_rate_per_s: float = POLL_RATE_PER_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.generate_timeout_s = generate_timeout_s
        # Which image URLs may be fetched (hosts, addresses, size); see url_policy.py.
        self.url_policy = url_policy or UrlPolicy(api_base_url=self.base_url)
        self.limiter = InflightLimiter(max_inflight)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        #: Reads a reference image's bytes by storage key (``references/<sha256>.<ext>``);
        #: set by whoever owns the store, needed only by rows with reference images.
        self.read_reference: Callable[[str], bytes] | None = None
        #: Thrown by the run on SIGINT/SIGTERM: no paid send leaves after it (stop.py).
        self.stop = StopSwitch()
        #: Where async submissions go with their journal lines when set (the run's
        #: submitting process, ``runs/submit_process.py``); closed with the client.
        self.channel: SubmitChannel | None = None
        # When to first look for an async result, learnt per (model, speed) from completed
        # generations; every poll draws on one budget (polling.py).
        self._latency: dict[tuple[str, str | None], LatencyTracker] = {}
        self.poll_budget = PollBudget(poll_rate_per_s)
        self._download_timeout = httpx.Timeout(download_timeout_s, connect=10.0)
        # One TLS context for the three clients below, as each would build it (the same
        # certificates and SSL_CERT_* variables): loading the CA bundle takes about 50 ms
        # of CPU, three times over before a run's first request.
        tls = httpx.create_ssl_context()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Api-Key": api_key},
            timeout=httpx.Timeout(generate_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max(max_inflight * 2, 20)),
            transport=transport,
            verify=tls,
        )
        # Without a channel (below), asynchronous submissions leave from threads of their
        # own with a blocking client, so the moment between writing the intent, Ideogram's
        # answer and writing its id never waits behind image work on the event loop (it
        # still waits for the GIL: the run's submitting process does not).
        self._submits = httpx.Client(
            base_url=self.base_url,
            headers={"Api-Key": api_key},
            timeout=httpx.Timeout(generate_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max(max_inflight * 2, 20)),
            transport=transport if isinstance(transport, httpx.BaseTransport) else None,
            verify=tls,
        )
        self._submit_threads = ThreadPoolExecutor(
            max_workers=max(1, min(max_inflight, SUBMIT_THREADS)),
            thread_name_prefix="ideogram-submit",
        )
        # Image hosts get no API key: the key is for api.ideogram.ai only.
        self._downloads = httpx.AsyncClient(
            timeout=self._download_timeout,
            limits=httpx.Limits(max_connections=max(max_inflight * 2, 20)),
            follow_redirects=False,  # fetch_image follows them, vetting every hop
            transport=transport,
            verify=tls,
        )

    def use_channel(self, channel: SubmitChannel | None) -> None:
        """Send async submissions through ``channel`` (None: from this process's threads),
        which hears of a stop as soon as the switch is thrown and is closed with us."""
        self.channel = channel
        if channel is not None:
            self.stop.on_throw(channel.stop)

    async def __aenter__(self) -> IdeogramClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._downloads.aclose()
        # Nothing is waiting on a submission by now, except after a forced stop, which
        # must not wait for one: its thread still writes the id if the answer comes.
        self._submit_threads.shutdown(wait=False, cancel_futures=True)
        if self.channel is not None:
            self.channel.close()
        self._submits.close()

    def _error(self, response: httpx.Response) -> IdeogramError:
        """The error for an answer that is not 200. A 429 that states the account's limit
        (``max_inflight_requests``) also teaches the limiter, so the next requests fit."""
        body = _json_or_text(response)
        if response.status_code == 429 and isinstance(body, dict):
            limit = body.get("max_inflight_requests")
            if isinstance(limit, int):
                self.limiter.learn_limit(limit)
        return error_for_status(response.status_code, body, retry_after=_retry_after(response))

    async def _with_retries(
        self, attempt_once: Callable[[], Awaitable[T]], *, stoppable: bool = False
    ) -> tuple[T, int]:
        """``stoppable``: a backoff ends early when the run stops (sends and polls, whose
        next attempt then refuses); downloads of paid images keep their backoff."""
        attempt = 1
        rate_limited = 0  # 429s have their own, larger budget (see RetryPolicy)
        while True:
            try:
                return await attempt_once(), attempt
            except IdeogramError as exc:
                exc.attempts = attempt
                if isinstance(exc, RateLimited):
                    rate_limited += 1
                    exhausted = rate_limited >= self.retry.max_rate_limited_attempts
                else:
                    exhausted = attempt - rate_limited >= self.retry.max_attempts
                if not exc.retryable or exhausted:
                    raise
                if self.on_retry is not None:
                    self.on_retry(exc, attempt)
                LAST_RETRY_ERROR.set(f"{type(exc).__name__}: {exc}")
                backoff_step = rate_limited if isinstance(exc, RateLimited) else attempt
                delay = self.retry.delay(min(backoff_step, 6), getattr(exc, "retry_after", None))
                await (self.stop.sleep(delay) if stoppable else asyncio.sleep(delay))
                attempt += 1

    async def generate(
        self, request: GenerationRequest, before_send: BeforeSend | None = None
    ) -> GenerationResponse:
        """Send one request (holding its images' in-flight slots) and parse the answer.

        ``before_send`` runs once, inside the slots, right before the first send: the
        engine records its intent there, so a queued request that never left leaves no
        trace and a sent one always does.
        """
        hook = before_send
        # Stored image bytes (an operation's source, reference images) are read once, off
        # the event loop, before the intent: a failed read sends nothing and leaves no trace.
        parts = await asyncio.to_thread(self._image_parts, request)

        async def once() -> GenerationResponse:
            nonlocal hook
            async with self.limiter.slots(request.num_images):
                self.stop.check()  # before the intent too: a stopped row leaves no trace
                if hook is not None:
                    run_hook, hook = hook, None
                    await run_hook()
                with translate_transport_errors(paid_request=True):
                    if request.is_operation:
                        response = await self._http.post(operation_path(request), files=parts)
                    elif request.is_legacy:
                        response = await self._http.post(LEGACY_PATH, json=legacy_body(request))
                    elif request.model in V2_ONLY_MODELS:  # no v1 path: v2, synchronously
                        response = await self._http.post(
                            v2_path(request), json=v2_body(request, asynchronous=False)
                        )
                    else:
                        response = await self._http.post(
                            v3_path(request), files=parts or v3_multipart(request)
                        )
            if response.status_code != 200:
                raise self._error(response)
            return GenerationResponse.from_api(response.json())

        result, attempts = await self._with_retries(once, stoppable=True)
        return replace(result, attempts=attempts)

    def _image_parts(self, request: GenerationRequest) -> list[Any] | None:
        """The multipart parts of a synchronous request that carries stored images (None:
        a body that reads nothing). Called on a worker thread."""
        if request.is_operation:
            return self._reading(operation_parts, request)
        if request.references and not request.is_legacy and request.model not in V2_ONLY_MODELS:
            return self._reading(v3_multipart, request)
        return None

    def _reading(
        self, build: Callable[..., list[Any]], request: GenerationRequest, **options: Any
    ) -> list[Any]:
        """``build(request, read_reference)``; a failed read is :class:`ImageUnreadable`
        (this row fails, the run goes on), never a crash of the whole batch."""
        read = self.read_reference

        def read_or_refuse(key: str) -> bytes:
            if read is None:
                raise ImageUnreadable(f"row {request.row}: nothing to read {key} with")
            try:
                return read(key)
            except Exception as exc:  # the store's error, whichever store it is
                raise ImageUnreadable(
                    f"row {request.row}: the image {key} could not be read from the storage "
                    f"root ({type(exc).__name__}: {exc}); nothing was sent"
                ) from exc

        return build(request, read_or_refuse, **options)

    # -- v2, asynchronous ----------------------------------------------------------------------

    async def _quote_v2(self, request: GenerationRequest) -> Any:
        """Ideogram's quote for ``request`` on its v2 path (``?dry_run=true``): JSON, or
        multipart/form-data when it carries reference images, read off the event loop."""
        params = {"dry_run": "true"}
        with translate_transport_errors():
            if request.is_operation:
                parts = await asyncio.to_thread(
                    self._reading, operation_parts, request, asynchronous=False
                )
                path = operation_path(request, asynchronous=True)
                response = await self._http.post(path, files=parts, params=params)
            elif request.references:
                parts = await asyncio.to_thread(
                    self._reading, v2_multipart, request, asynchronous=False
                )
                response = await self._http.post(v2_path(request), files=parts, params=params)
            else:
                response = await self._http.post(
                    v2_path(request), json=v2_body(request, asynchronous=False), params=params
                )
        if response.status_code != 200:
            raise self._error(response)
        return response.json()

    async def quote_usd(self, request: GenerationRequest) -> float:
        """Ideogram's own price for ``request`` (``?dry_run=true``: not billed, not run)."""
        body, _attempts = await self._with_retries(lambda: self._quote_v2(request))
        return float(body["usd_micros"]) / 1_000_000

    def _submit_now(
        self, request: GenerationRequest, on_intent: OnIntent | None, on_submitted: OnSubmitted
    ) -> httpx.Response:
        """One submission, on a submit thread: the intent, the POST, and the id, with
        nothing of ours in between (see :meth:`generate_async`). Reference images (stored
        bytes, as multipart/form-data) are read first, outside that span."""
        path, parts = self._submission(request)
        self.stop.check()
        if on_intent is not None:
            on_intent()
        with translate_transport_errors(paid_request=True):
            if parts is not None:
                response = self._submits.post(path, files=parts)
            else:
                response = self._submits.post(path, json=v2_body(request))
        if response.status_code == 200:
            on_submitted(str(response.json()["generation_id"]))
        return response

    def _submission(self, request: GenerationRequest) -> tuple[str, list[Any] | None]:
        """Where an asynchronous submission goes, and its multipart parts (None: JSON).
        Image bytes (an operation's source, reference images) are read here, before the
        intent."""
        if request.is_operation:
            parts = self._reading(operation_parts, request, asynchronous=True)
            return operation_path(request, asynchronous=True), parts
        if request.references:
            return v2_path(request), self._reading(v2_multipart, request)
        return v2_path(request), None

    async def _submit(
        self,
        request: GenerationRequest,
        on_intent: OnIntent | None,
        on_submitted: OnSubmitted,
        lines: SubmitLines | None = None,
    ) -> tuple[str, int]:
        """Submit with retries; the intent goes with the first attempt only. With ``lines``
        and a usable :attr:`channel`, the POST and both journal lines are the channel's."""
        loop = asyncio.get_running_loop()
        hook = on_intent
        first_line = lines.intent if lines is not None else None

        async def through_channel(channel: SubmitChannel, lines: SubmitLines) -> httpx.Response:
            nonlocal hook, first_line
            self.stop.check()
            if request.is_operation or request.references:  # stored bytes: read off the loop
                path, parts = await asyncio.to_thread(self._submission, request)
            else:
                path, parts = self._submission(request)
            body = v2_body(request) if parts is None else None
            response = await channel.post(path, body, parts, replace(lines, intent=first_line))
            hook = first_line = None
            return response

        async def once() -> str:
            nonlocal hook, first_line
            response = None
            if lines is not None and (channel := self.channel) is not None and channel.usable:
                try:
                    response = await through_channel(channel, lines)
                except ChannelGone:
                    pass  # nothing was sent: from the threads below
                except BaseException:
                    hook = first_line = None  # the intent may be written
                    raise
            if response is None:
                run_hook, hook = hook, None
                first_line = None
                response = await loop.run_in_executor(
                    self._submit_threads, self._submit_now, request, run_hook, on_submitted
                )
            if response.status_code != 200:
                raise self._error(response)
            return str(response.json()["generation_id"])

        return await self._with_retries(once, stoppable=True)

    async def generate_async(
        self,
        request: GenerationRequest,
        on_submitted: OnSubmitted,
        *,
        resume_generation_id: str | None = None,
        on_intent: OnIntent | None = None,
        lines: SubmitLines | None = None,
    ) -> GenerationResponse:
        """Submit with ``async: true``, record the id via ``on_submitted``, then poll.

        ``on_intent`` (before the first send) and ``on_submitted`` (the moment Ideogram
        accepts) run on the submitting thread itself, around a blocking POST: a process
        killed between the two leaves a generation that may be billed and whose id we
        never wrote, so that span must be the network round trip, never a wait for the
        event loop (busy with downloads and hashing). Keep both quick and thread-safe:
        the engine appends to a local journal. With ``lines`` and a :attr:`channel` (the
        run's submitting process), the channel makes the POST and writes those lines
        instead, out of reach of this process's GIL. A later run polls the recorded id
        instead of paying again. With ``resume_generation_id`` nothing is submitted unless that
        generation failed. The images' in-flight slots are held until the generation
        completes, because that is how long Ideogram counts them.
        """
        generation_id = resume_generation_id
        attempts = 0
        intent = on_intent if generation_id is None else None
        if lines is not None and generation_id is not None:
            lines = replace(lines, intent=None)
        latency = self._latency.setdefault(
            (request.model, request.rendering_speed), LatencyTracker()
        )
        async with self.limiter.slots(request.num_images):
            while True:
                if generation_id is None:
                    generation_id, tries = await self._submit(request, intent, on_submitted, lines)
                    intent = None
                    if lines is not None:
                        lines = replace(lines, intent=None)
                    attempts += tries
                try:
                    result = await self._wait(
                        generation_id, latency, resumed=generation_id == resume_generation_id
                    )
                except GenerationFailed as exc:
                    exc.attempts = attempts
                    if attempts >= self.retry.max_attempts:
                        raise
                    if self.on_retry is not None:
                        self.on_retry(exc, attempts)
                    generation_id = None
                    continue
                return replace(result, attempts=max(attempts, 1), generation_id=generation_id)

    async def _wait(
        self, generation_id: str, latency: LatencyTracker, *, resumed: bool = False
    ) -> GenerationResponse:
        """Poll until the generation completes or fails (see ``polling.py`` for when).

        A generation resumed after a crash was submitted long ago: it is polled at once,
        and its latency is not learnt from.
        """
        submitted = time.monotonic()
        if not resumed:
            await self.stop.sleep(latency.estimate_s)
        polls = 0
        while True:
            if self.stop.thrown:
                # Accepted by Ideogram and recorded: the next run collects the images
                # without paying again.
                raise SendsStopped(
                    f"generation {generation_id} left to the next run",
                    generation_id=generation_id,
                )
            body, _tries = await self._with_retries(
                lambda: self._poll_once(generation_id), stoppable=True
            )
            polls += 1
            status = body.get("status")
            if status == "completed":
                if not resumed:
                    latency.observe(time.monotonic() - submitted, caught_by_first_poll=polls == 1)
                return GenerationResponse.from_api(body)
            if status == "failed":
                raise GenerationFailed(
                    f"generation {generation_id} failed: {body.get('failure_reason') or 'unknown'}"
                )
            await self.stop.sleep(next_interval(polls, latency.estimate_s))

    async def _poll_once(self, generation_id: str) -> Any:
        await self.poll_budget.take()
        with translate_transport_errors():
            response = await self._http.get(f"{V2_GENERATIONS_PATH}/{generation_id}")
        if response.status_code != 200:
            raise self._error(response)
        return response.json()

    # -- downloads ---------------------------------------------------------------------------

    async def download(self, url: str) -> tuple[bytes, int]:
        """Fetch an image while its link is valid; returns the bytes and the attempts made.

        The URL policy is applied first (a refused URL is never requested, nor retried);
        the PNG signature and the declared length are checked so a truncated body is
        retried like a dropped connection while the link is still valid.
        """

        async def once() -> bytes:
            with translate_transport_errors():
                return await fetch_image(self._downloads, url, self.url_policy)

        return await self._with_retries(once)

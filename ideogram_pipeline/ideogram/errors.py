"""The error tree for everything that can go wrong talking to Ideogram.

::

    IdeogramError
    ├── TransportError            network failure or timeout (retried)
    │   └── ResponseLost          a paid request left but its answer did not arrive (not
    │                             retried: it may have run; the row ends ``unknown``)
    ├── APIStatusError            an HTTP error answer; carries status, body, billed
    │   ├── InvalidRequest        400 (not retried)
    │   ├── AuthError             401 / 403 (stops the batch)
    │   ├── OutOfCredits          402 (stops the batch)
    │   ├── SafetyRejected        422 (fails only that row; not billed)
    │   ├── RateLimited           429 inflight_limit (retried; not billed)
    │   └── ServerError           5xx (retried)
    ├── GenerationFailed          an async generation ended ``failed`` (not billed; resent)
    └── DownloadError             the image could not be fetched or is not what was promised
        ├── LinkExpired           403 / 404 / 410 on the signed image URL
        ├── CorruptImage          wrong signature, truncated, checksum mismatch
        ├── UntrustedUrl          refused before fetching: host, scheme, address, redirects
        ├── ImageTooLarge         the body exceeds IDEOGRAM_MAX_IMAGE_BYTES (not retried)
        └── UnexpectedContent     the host answered with something that is not an image

Retries decide by class, never by parsing messages. No message ever contains the API key:
errors are built from status codes and response bodies, never from request headers.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIStatusError",
    "AuthError",
    "CorruptImage",
    "DownloadError",
    "GenerationFailed",
    "IdeogramError",
    "ImageTooLarge",
    "ImageUnreadable",
    "InvalidRequest",
    "LinkExpired",
    "OutOfCredits",
    "RateLimited",
    "ResponseLost",
    "SafetyRejected",
    "ServerError",
    "TransportError",
    "UnexpectedContent",
    "UntrustedUrl",
    "error_for_status",
]


class IdeogramError(Exception):
    """Base class: something went wrong generating or fetching an image."""

    #: Whether trying the same thing again later can succeed.
    retryable: bool = False
    #: Whether the whole batch must stop (no other row can succeed either).
    fatal: bool = False
    #: How many attempts were made before giving up (set by the retry loop).
    attempts: int = 1


class TransportError(IdeogramError):
    """The request did not complete: connection refused or reset, timeout, protocol error."""

    retryable = True


class ResponseLost(TransportError):
    """A generate request was sent but the answer never came (timeout, dropped connection).

    Ideogram keeps working on a request whose connection dropped, and bills it, so sending
    it again could pay twice: the row is reported ``unknown`` instead.
    """

    retryable = False


class APIStatusError(IdeogramError):
    """Ideogram answered with an HTTP error status."""

    def __init__(self, status: int, body: Any = None, *, retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.retry_after = retry_after
        super().__init__(f"HTTP {status}: {_describe(body)}")

    @property
    def billed(self) -> bool:
        """Ideogram bills only completed generations; no error status is billed."""
        return False


class InvalidRequest(APIStatusError):
    """400: the request body was rejected; sending it again cannot help."""


class AuthError(APIStatusError):
    """401 / 403: the API key is missing, wrong or lacks access."""

    fatal = True


class OutOfCredits(APIStatusError):
    """402: out of credits, plan or daily limit; retrying fails until the account changes."""

    fatal = True


class SafetyRejected(APIStatusError):
    """422: the prompt failed Ideogram's safety check (not billed)."""


class RateLimited(APIStatusError):
    """429: too many images in flight for the organisation (not billed)."""

    retryable = True


class ServerError(APIStatusError):
    """5xx: Ideogram had a problem; it may succeed later."""

    retryable = True


class GenerationFailed(IdeogramError):
    """An asynchronous generation ended ``failed``: not billed, so sending again is safe."""

    retryable = True


class ImageUnreadable(IdeogramError):
    """An image the request must carry (an operation's source, a reference image) could not
    be read from the storage root: nothing was sent, and only this row fails."""


class DownloadError(IdeogramError):
    """The image URL could not be fetched, or returned something that is not the image."""

    retryable = True


class LinkExpired(DownloadError):
    """The signed image URL is no longer valid; only a new (paid) generation can help."""

    retryable = False


class CorruptImage(DownloadError):
    """The bytes are not a complete PNG (bad signature, truncated, wrong length)."""


class UntrustedUrl(DownloadError):
    """The URL (or a redirect) leaves the allow-list of image hosts; nothing was fetched."""

    retryable = False


class ImageTooLarge(DownloadError):
    """The download passed the size cap; it was aborted and nothing was stored."""

    retryable = False


class UnexpectedContent(DownloadError):
    """The image host declared a body that is not an image (an HTML error page, say)."""

    retryable = False


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: InvalidRequest,
    401: AuthError,
    402: OutOfCredits,
    403: AuthError,
    422: SafetyRejected,
    429: RateLimited,
}


def error_for_status(
    status: int, body: Any = None, *, retry_after: float | None = None
) -> APIStatusError:
    """Map an HTTP error status to the most specific class in the tree."""
    if status >= 500:
        cls: type[APIStatusError] = ServerError
    else:
        cls = _STATUS_CLASSES.get(status, APIStatusError)
    return cls(status, body, retry_after=retry_after)


def _describe(body: Any) -> str:
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("error", "message", "detail") if body.get(k)]
        if body.get("reject_reason"):
            parts.append(f"reject_reason={body['reject_reason']}")
        if parts:
            return "; ".join(parts)
    text = str(body or "").strip()
    return text[:300] if text else "no details"

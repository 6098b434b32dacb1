"""Fetching one image under a :class:`~ideogram_pipeline.ideogram.url_policy.UrlPolicy`.

Redirects are followed here, by hand, rather than by httpx: every hop is vetted by the
policy before it is requested, and there are at most ``policy.max_redirects`` of them. The
body is streamed and abandoned as soon as it passes ``policy.max_bytes``, so an endless or
oversized response costs at most the cap in memory. What arrives must be a whole PNG
(:func:`ideogram_pipeline.images.safety.check_png`) before anyone stores it.

httpx exceptions are left to the caller's
:func:`~ideogram_pipeline.ideogram.client.translate_transport_errors`.
"""

from __future__ import annotations

import httpx

from ideogram_pipeline.ideogram.errors import (
    CorruptImage,
    DownloadError,
    ImageTooLarge,
    LinkExpired,
    UnexpectedContent,
    UntrustedUrl,
)
from ideogram_pipeline.ideogram.url_policy import UrlPolicy
from ideogram_pipeline.images.safety import ImageRejected, check_png

__all__ = ["fetch_image"]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_EXPIRED_STATUSES = frozenset({401, 403, 404, 410})
#: Content types an image host may reasonably declare for a PNG.
_IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


async def fetch_image(http: httpx.AsyncClient, url: str, policy: UrlPolicy) -> bytes:
    """GET ``url`` (following vetted redirects) and return the verified PNG bytes.

    ``http`` must not follow redirects itself and must not carry the API key.
    """
    current = url
    for hop in range(policy.max_redirects + 1):
        try:
            target = await policy.vet(current)
        except UntrustedUrl as exc:
            if hop:
                raise UntrustedUrl(f"the image host redirected: {exc}") from None
            raise
        request = http.build_request(
            "GET", target.connect_url, headers=target.headers, extensions=target.extensions
        )
        response = await http.send(request, stream=True)
        try:
            location = response.headers.get("location")
            if response.status_code in _REDIRECT_STATUSES and location:
                # Relative locations resolve against the URL as named, not the pinned address.
                current = str(target.url.join(location))
                continue
            return await _read_png(response, policy.max_bytes)
        finally:
            await response.aclose()
    raise UntrustedUrl(f"image download redirected more than {policy.max_redirects} times")


async def _read_png(response: httpx.Response, max_bytes: int) -> bytes:
    status = response.status_code
    if status in _EXPIRED_STATUSES:
        raise LinkExpired(f"image link no longer valid (HTTP {status})")
    if status != 200:
        raise DownloadError(f"image download failed with HTTP {status}")
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type and not content_type.startswith(_IMAGE_TYPES):
        raise UnexpectedContent(f"the image host sent {content_type[:60]}, not an image")
    identity = response.headers.get("content-encoding", "identity").lower() == "identity"
    declared = _declared_length(response) if identity else None
    if declared is not None and declared > max_bytes:
        raise ImageTooLarge(
            f"image is {declared} bytes, over the {max_bytes}-byte cap (IDEOGRAM_MAX_IMAGE_BYTES)"
        )
    # The chunks are joined once at the end: growing one buffer copied the image again at
    # each resize, and copying it into bytes once more, all in the event loop's thread.
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        received += len(chunk)
        if received > max_bytes:
            raise ImageTooLarge(
                f"image download passed the {max_bytes}-byte cap (IDEOGRAM_MAX_IMAGE_BYTES); "
                "aborted"
            )
    data = b"".join(chunks)
    if declared is not None and declared != len(data):
        raise CorruptImage(f"truncated download: {len(data)} of {declared} bytes")
    try:
        check_png(data)
    except ImageRejected as exc:
        raise (CorruptImage if exc.transient else UnexpectedContent)(str(exc)) from None
    return data


def _declared_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise CorruptImage(f"invalid Content-Length {value[:40]!r}") from None

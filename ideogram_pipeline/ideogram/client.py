"""Async Ideogram client: one place for HTTP, retries, the in-flight limit and error mapping.

The API key is sent only in the ``Api-Key`` header. httpx never puts headers into exception
messages, and our own errors are built from status codes and bodies, so the key cannot leak
into logs or metadata through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx

from ideogram_pipeline.ideogram.errors import (
    CorruptImage,
    DownloadError,
    IdeogramError,
    LinkExpired,
    TransportError,
    error_for_status,
)
from ideogram_pipeline.ideogram.limiter import InflightLimiter
from ideogram_pipeline.ideogram.requests import LEGACY_PATH, V3_PATH, legacy_body, v3_multipart
from ideogram_pipeline.models import GenerationRequest, GenerationResponse

__all__ = ["IdeogramClient", "RetryPolicy", "translate_transport_errors"]

T = TypeVar("T")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, so many workers do not retry in lockstep."""

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay_s)
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)


@contextlib.contextmanager
def translate_transport_errors() -> Iterator[None]:
    """The single choke point where httpx exceptions become our :class:`TransportError`."""
    try:
        yield
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


RetryCallback = Callable[[IdeogramError, int], None]


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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = InflightLimiter(max_inflight)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self._download_timeout = httpx.Timeout(download_timeout_s, connect=10.0)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Api-Key": api_key},
            timeout=httpx.Timeout(generate_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max(max_inflight * 2, 20)),
            transport=transport,
        )
        # Image hosts get no API key: the key is for api.ideogram.ai only.
        self._downloads = httpx.AsyncClient(
            timeout=self._download_timeout,
            limits=httpx.Limits(max_connections=max(max_inflight * 2, 20)),
            follow_redirects=True,
            transport=transport,
        )

    async def __aenter__(self) -> IdeogramClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._downloads.aclose()

    async def _with_retries(self, attempt_once: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        attempt = 1
        while True:
            try:
                return await attempt_once(), attempt
            except IdeogramError as exc:
                exc.attempts = attempt
                if not exc.retryable or attempt >= self.retry.max_attempts:
                    raise
                if self.on_retry is not None:
                    self.on_retry(exc, attempt)
                await asyncio.sleep(self.retry.delay(attempt, getattr(exc, "retry_after", None)))
                attempt += 1

    async def generate(self, request: GenerationRequest) -> GenerationResponse:
        """Send one request (holding its images' in-flight slots) and parse the answer."""

        async def once() -> GenerationResponse:
            async with self.limiter.slots(request.num_images):
                with translate_transport_errors():
                    if request.is_legacy:
                        response = await self._http.post(LEGACY_PATH, json=legacy_body(request))
                    else:
                        response = await self._http.post(V3_PATH, files=v3_multipart(request))
            if response.status_code != 200:
                raise error_for_status(
                    response.status_code,
                    _json_or_text(response),
                    retry_after=_retry_after(response),
                )
            return GenerationResponse.from_api(response.json())

        result, attempts = await self._with_retries(once)
        return replace(result, attempts=attempts)

    async def download(self, url: str) -> tuple[bytes, int]:
        """Fetch an image while its link is valid; returns the bytes and the attempts made.

        The PNG signature and the declared length are checked here so a truncated body is
        retried like a dropped connection while the link is still valid.
        """

        async def once() -> bytes:
            with translate_transport_errors():
                response = await self._downloads.get(url)
            if response.status_code in (401, 403, 404, 410):
                raise LinkExpired(f"image link no longer valid (HTTP {response.status_code})")
            if response.status_code != 200:
                raise DownloadError(f"image download failed with HTTP {response.status_code}")
            data = response.content
            declared = response.headers.get("content-length")
            if declared is not None and int(declared) != len(data):
                raise CorruptImage(f"truncated download: {len(data)} of {declared} bytes")
            if not data.startswith(PNG_SIGNATURE):
                raise CorruptImage("download is not a PNG (bad signature)")
            if not data.endswith(b"IEND\xaeB`\x82"):
                raise CorruptImage("PNG is truncated (no IEND chunk)")
            return data

        return await self._with_retries(once)

"""The error mapping is total, and the in-flight limiter counts images the way Ideogram does.

Exact status cases go through httpx.MockTransport (the one seam STYLE allows for cases a
running simulator cannot be made to produce on demand); everything else is real.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ideogram_pipeline.ideogram import client as client_module
from ideogram_pipeline.ideogram.client import (
    IdeogramClient,
    RetryPolicy,
    translate_transport_errors,
)
from ideogram_pipeline.ideogram.errors import (
    APIStatusError,
    AuthError,
    InvalidRequest,
    OutOfCredits,
    RateLimited,
    SafetyRejected,
    ServerError,
    TransportError,
    error_for_status,
)
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.limiter import InflightLimiter
from ideogram_pipeline.ideogram.url_policy import UrlPolicy

EXPECTED = {
    400: (InvalidRequest, False, False),
    401: (AuthError, False, True),
    402: (OutOfCredits, False, True),
    403: (AuthError, False, True),
    404: (APIStatusError, False, False),
    413: (APIStatusError, False, False),
    422: (SafetyRejected, False, False),
    429: (RateLimited, True, False),
    500: (ServerError, True, False),
    502: (ServerError, True, False),
    503: (ServerError, True, False),
}


@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_every_documented_status_maps_to_its_class(status: int) -> None:
    cls, retryable, fatal = EXPECTED[status]
    error = error_for_status(status, {"error": "x", "reject_reason": "inflight_limit"})
    assert type(error) is cls
    assert (error.retryable, error.fatal, error.billed) == (retryable, fatal, False)
    assert "reject_reason=inflight_limit" in str(error)


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


@pytest.mark.parametrize(
    "exc_type", sorted(_all_subclasses(httpx.TransportError) | {httpx.TransportError}, key=str)
)
def test_every_httpx_transport_error_becomes_ours(exc_type: type[Exception]) -> None:
    with pytest.raises(TransportError) as caught, translate_transport_errors():
        raise exc_type("boom")
    assert caught.value.retryable
    assert isinstance(caught.value.__cause__, exc_type)


def _client(handler, **kwargs) -> IdeogramClient:
    return IdeogramClient(
        "https://api.example.test",
        "secret-key-123",
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01),
        **kwargs,
    )


def test_429_is_retried_and_honours_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(client_module.asyncio, "sleep", fake_sleep)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        assert request.headers["Api-Key"] == "secret-key-123"
        if len(calls) == 1:
            return httpx.Response(
                429, json={"reject_reason": "inflight_limit"}, headers={"Retry-After": "0.005"}
            )
        return httpx.Response(200, json={"created": "t", "data": [{"prompt": "p", "url": ""}]})

    async def go():
        async with _client(handler) as client:
            return await client.generate(GenerationRequest(row=1, prompt="p"))

    response = asyncio.run(go())
    assert len(calls) == 2 and response.attempts == 2
    assert sleeps == [0.005]
    assert response.images[0].url is None  # "" means withheld


@pytest.mark.parametrize("status", [400, 401, 402, 422])
def test_non_retryable_statuses_are_sent_once(status: int) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"error": "no"})

    async def go():
        async with _client(handler) as client:
            await client.generate(GenerationRequest(row=1, prompt="p"))

    with pytest.raises(APIStatusError) as caught:
        asyncio.run(go())
    assert len(calls) == 1
    assert "secret-key-123" not in str(caught.value) + repr(caught.value)


def test_the_key_is_not_sent_to_image_hosts() -> None:
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(request.headers)
        ihdr = b"\x00\x00\x00\x0dIHDR" + b"\x00\x00\x00\x01" * 2 + b"\x08\x02\x00\x00\x00" + b"crc!"
        return httpx.Response(200, content=b"\x89PNG\r\n\x1a\n" + ihdr + b"IEND\xaeB`\x82")

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]  # a public address: the URL policy lets it through

    policy = UrlPolicy(image_hosts=("images.example.test",), resolver=resolve)

    async def go():
        async with _client(handler, url_policy=policy) as client:
            return await client.download("https://images.example.test/a.png")

    data, attempts = asyncio.run(go())
    assert attempts == 1 and data.startswith(b"\x89PNG")
    assert "api-key" not in {k.lower() for k in seen}


def test_limiter_counts_images_not_requests() -> None:
    async def go() -> tuple[int, int]:
        limiter = InflightLimiter(5)
        active = 0
        peak = 0

        async def job(images: int) -> None:
            nonlocal active, peak
            async with limiter.slots(images):
                active += min(images, 5)
                peak = max(peak, active)
                await asyncio.sleep(0.01)
                active -= min(images, 5)

        await asyncio.gather(*(job(n) for n in [4, 1, 3, 2, 8, 1, 1, 1, 1, 4]))
        return peak, limiter.peak

    peak, reported = asyncio.run(go())
    assert peak <= 5 and reported == peak
    assert peak >= 4  # it did run things concurrently


def test_a_429_storm_outlasts_the_ordinary_retry_budget() -> None:
    """429 means "wait", never billed: ten in a row do not fail a row whose other
    failures would be given up after three attempts."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) <= 10:
            return httpx.Response(429, json={"reject_reason": "inflight_limit"})
        return httpx.Response(200, json={"created": "t", "data": [{"prompt": "p", "url": ""}]})

    async def go():
        async with _client(handler) as client:
            return await client.generate(GenerationRequest(row=1, prompt="p"))

    assert asyncio.run(go()).attempts == 11

    calls.clear()

    def failing(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, json={"error": "down"})

    async def fail():
        async with _client(failing) as client:
            await client.generate(GenerationRequest(row=1, prompt="p"))

    with pytest.raises(ServerError):
        asyncio.run(fail())
    assert len(calls) == 3  # other retryable failures keep the ordinary budget


def test_a_429_that_states_the_limit_lowers_the_client_limit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"reject_reason": "inflight_limit", "max_inflight_requests": 3}
        )

    async def go() -> int:
        async with _client(handler, max_inflight=10) as client:
            with pytest.raises(RateLimited):
                await client.generate(GenerationRequest(row=1, prompt="p"))
            return client.limiter.max_images

    assert asyncio.run(go()) == 3


def test_a_waiter_still_fits_after_the_limit_is_lowered() -> None:
    async def go() -> int:
        limiter = InflightLimiter(8)
        async with limiter.slots(2):
            waiter = asyncio.create_task(_hold(limiter, 8))
            await asyncio.sleep(0)
            limiter.learn_limit(4)  # the 8-image request now needs (and gets) 4 slots
        await asyncio.wait_for(waiter, 1)
        return limiter.peak

    assert asyncio.run(go()) == 4


async def _hold(limiter: InflightLimiter, images: int) -> None:
    async with limiter.slots(images):
        await asyncio.sleep(0)

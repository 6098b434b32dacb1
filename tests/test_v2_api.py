"""Ideogram's v2 API as the client uses it, against the simulator's v2 endpoints (loopback).

Covers the asynchronous flow (submit, record the id, poll), resubmission after a
``failed`` generation, dry-run price quotes, resuming a recorded generation id without
paying again, and the v2 request validation.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ideogram_pipeline.ideogram.client import IdeogramClient, RetryPolicy
from ideogram_pipeline.ideogram.errors import InvalidRequest
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.prices import price_per_image
from ideogram_pipeline.ideogram.requests import v2_body
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator


@pytest.fixture(scope="module")
def sim() -> Simulator:
    with running_simulator(SimulatorConfig(latency_s=0.1, image_scale=0.25)) as simulator:
        yield simulator


def _client(sim: Simulator) -> IdeogramClient:
    return IdeogramClient(
        sim.base_url,
        sim.api_key,
        retry=RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05),
    )


def test_async_generation_records_the_id_before_waiting(sim: Simulator) -> None:
    request = GenerationRequest(row=1, prompt="A teapot shaped like a whale", seed=3, num_images=2)
    seen: list[str] = []

    async def go():
        async with _client(sim) as client:
            return await client.generate_async(request, seen.append)

    response = asyncio.run(go())
    assert len(seen) == 1 and response.generation_id == seen[0]
    assert len(response.images) == 2 and all(i.url for i in response.images)
    assert {i.seed for i in response.images} == {3}


def test_resuming_a_recorded_generation_pays_nothing(sim: Simulator) -> None:
    request = GenerationRequest(row=1, prompt="A paper crane on a desk lamp", seed=4)

    async def go():
        async with _client(sim) as client:
            ids: list[str] = []
            first = await client.generate_async(request, ids.append)
            billed = sim.stats.billed_images
            again = await client.generate_async(
                request, ids.append, resume_generation_id=first.generation_id
            )
            return first, again, billed, ids

    first, again, billed, ids = asyncio.run(go())
    assert sim.stats.billed_images == billed  # polling a recorded id is free
    assert again.images[0].url == first.images[0].url and ids == [first.generation_id]


def test_failed_generations_are_resubmitted(sim: Simulator) -> None:
    request = GenerationRequest(row=1, prompt="A wind-up robot [sim:failedx2]", seed=5)

    async def go():
        async with _client(sim) as client:
            ids: list[str] = []
            response = await client.generate_async(request, ids.append)
            return response, ids

    response, ids = asyncio.run(go())
    assert len(ids) == 3 and response.generation_id == ids[-1]  # two failed, third done
    assert sim.stats.billed_by_prompt_seed[("A wind-up robot [sim:failedx2]", 5)] == 1


@pytest.mark.parametrize(
    ("request_", "speed"),
    [
        (GenerationRequest(row=1, prompt="x", rendering_speed="QUALITY", num_images=3), "QUALITY"),
        (
            GenerationRequest(row=1, prompt="x", model="ideogram-4", rendering_speed="TURBO"),
            "TURBO",
        ),
    ],
)
def test_dry_run_quotes_match_the_price_table(
    sim: Simulator, request_: GenerationRequest, speed: str
) -> None:
    async def go() -> float:
        async with _client(sim) as client:
            return await client.quote_usd(request_)

    billed = sim.stats.billed_images
    quote = asyncio.run(go())
    assert quote == pytest.approx(price_per_image(request_.model, speed) * request_.num_images)
    assert sim.stats.billed_images == billed  # quotes are never billed


def test_v2_bodies_use_lowercase_enums_and_are_validated(sim: Simulator) -> None:
    body = v2_body(
        GenerationRequest(
            row=1, prompt="x", rendering_speed="TURBO", magic_prompt="OFF", style_type="DESIGN"
        )
    )
    assert (body["rendering_speed"], body["magic_prompt"], body["style_type"]) == (
        "turbo",
        "off",
        "design",
    )
    assert body["async"] is True
    bad = httpx.post(
        f"{sim.base_url}/v2/image/generate/ideogram-4",
        json={"prompt": "x", "aspect_ratio": "16x9"},
        headers={"Api-Key": sim.api_key},
    )
    assert bad.status_code == 400 and "aspect_ratio" in bad.json()["error"]

    async def go() -> None:
        async with _client(sim) as client:
            await client.generate_async(GenerationRequest(row=1, prompt=""), lambda _id: None)

    with pytest.raises(InvalidRequest):
        asyncio.run(go())


def test_polling_is_rate_limited_like_ideogram(sim: Simulator) -> None:
    submit = httpx.post(
        f"{sim.base_url}/v2/image/generate/ideogram-3",
        json={"prompt": "A slow kiln [sim:slow]", "async": True},
        headers={"Api-Key": sim.api_key},
    ).json()
    statuses = [
        httpx.get(
            f"{sim.base_url}/v2/generations/{submit['generation_id']}",
            headers={"Api-Key": sim.api_key},
        ).status_code
        for _ in range(5)
    ]
    assert statuses == [200] * 5  # well under 1,000 per 10 s
    pending = httpx.get(
        f"{sim.base_url}/v2/generations/{submit['generation_id']}",
        headers={"Api-Key": sim.api_key},
    ).json()
    assert pending["status"] == "pending" and "data" not in pending


def test_polling_beyond_the_limit_gets_429_with_retry_after() -> None:
    with running_simulator(SimulatorConfig(poll_limit_per_10s=3, slow_latency_s=5)) as sim:
        submit = httpx.post(
            f"{sim.base_url}/v2/image/generate/ideogram-3",
            json={"prompt": "A slow kiln [sim:slow]", "async": True},
            headers={"Api-Key": sim.api_key},
        ).json()
        answers = [
            httpx.get(
                f"{sim.base_url}/v2/generations/{submit['generation_id']}",
                headers={"Api-Key": sim.api_key},
            )
            for _ in range(4)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("model", "fields", "usd"),
    [("ideogram-4", {"resolution": "2048x2048"}, 0.06), ("ideogram-4-5", {"quality": "LOW"}, 0.03)],
)
def test_v2_only_models_in_sync_mode_go_to_their_v2_path(
    sim: Simulator, model: str, fields: dict[str, str], usd: float
) -> None:
    """Sync mode sends v2-only models to ``/v2/image/generate/{model}`` without ``async``:
    they have no v1 path, and the v3 endpoint would make a V_3 image (or refuse 4.5's size
    and quality) instead of the model the row asked for."""
    request = GenerationRequest(row=1, prompt="A kite over a salt flat", model=model, **fields)

    async def go():
        async with _client(sim) as client:
            return await client.generate(request)

    billed = sim.stats.billed_usd
    response = asyncio.run(go())
    assert len(response.images) == 1 and response.images[0].url
    assert response.generation_id  # only v2 answers carry one; the v3 endpoint's do not
    assert sim.stats.billed_usd - billed == pytest.approx(usd)

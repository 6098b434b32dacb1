"""The bundled Ideogram simulator, over real HTTP on loopback.

Nothing is mocked: each simulator runs uvicorn in a background thread on a free port and is
driven with httpx. PNGs are checked with an independent parser written here (signature,
chunk CRCs, IHDR size, zlib stream), not with the simulator's own code.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ideogram_pipeline.ideogram import spec
from ideogram_pipeline.simulator.images import ImageKey, pixel_size, render_png
from ideogram_pipeline.simulator.server import (
    Simulator,
    SimulatorConfig,
    Triggers,
    running_simulator,
)

V3 = "/v1/ideogram-v3/generate"
LEGACY = "/generate"
_unique = itertools.count()


def unique(prompt: str) -> str:
    """Triggers count attempts per exact prompt, so every test uses prompts of its own."""
    return f"{prompt} #{next(_unique)}"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    config = SimulatorConfig(image_scale=0.25, slow_latency_s=0.3, max_inflight=16)
    with running_simulator(config) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    sim.stats.reset()
    with httpx.Client(base_url=sim.base_url, headers={"Api-Key": sim.api_key}) as http:
        yield http


def parse_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, decompressed scanlines); asserts the structure and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour) == (8, 2)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    assert all(raw[row * (1 + 3 * width)] <= 4 for row in range(height))
    return width, height, raw


def generate(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = client.post(V3, json=fields)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- happy paths ---------------------------------------------------------------------------


def test_v3_json(client: httpx.Client, sim: Simulator) -> None:
    body = generate(
        client,
        prompt="a lighthouse at dusk",
        seed=7,
        num_images=3,
        aspect_ratio="16x9",
        magic_prompt="OFF",
        style_type="REALISTIC",
    )
    assert spec.validate_response(body) == []
    assert body["created"].endswith("+00:00")
    assert len(body["data"]) == 3
    for item in body["data"]:
        assert item["prompt"] == "a lighthouse at dusk"
        assert (item["seed"], item["resolution"], item["style_type"]) == (
            7,
            "1312x736",
            "REALISTIC",
        )
        assert item["is_image_safe"] is True
        assert item["url"].startswith(f"{sim.base_url}/api/images/ephemeral/")
        assert "?exp=" in item["url"] and "&sig=" in item["url"]
    assert len({item["url"] for item in body["data"]}) == 3


def test_v3_multipart_matches_json(client: httpx.Client) -> None:
    fields = {"prompt": unique("a red fox"), "seed": "99", "num_images": "2", "magic_prompt": "ON"}
    fields |= {"resolution": "1280x800", "style_type": "DESIGN"}
    parts = [(name, (None, value)) for name, value in fields.items()]
    # Reference images are checked like Ideogram does (issue 18): a fake PNG is refused.
    fake = [*parts, ("style_reference_images", ("ref.png", b"\x89PNG fake", "image/png"))]
    refused = client.post(V3, files=fake)
    assert refused.status_code == 400 and "is not PNG, JPEG or WebP" in refused.text
    reference = render_png(ImageKey(model="V_3", prompt="ref", seed=1, resolution="64x64"), 16, 16)
    parts.append(("style_reference_images", ("ref.png", reference, "image/png")))
    multipart = client.post(V3, files=parts)
    assert multipart.status_code == 200, multipart.text
    from_json = generate(client, **{**fields, "seed": 99, "num_images": 2})
    got, want = multipart.json()["data"], from_json["data"]
    strip = [{k: v for k, v in item.items() if k != "url"} for item in got]
    assert strip == [{k: v for k, v in item.items() if k != "url"} for item in want]
    assert got[0]["prompt"].startswith(fields["prompt"]) and got[0]["prompt"] != fields["prompt"]
    images = [httpx.get(item["url"]).content for item in got]
    assert images == [httpx.get(item["url"]).content for item in want]
    assert images[0] != images[1]  # one request, one seed, two different pictures


def test_multipart_types_are_validated(client: httpx.Client) -> None:
    response = client.post(V3, files=[("prompt", (None, "x")), ("seed", (None, "many"))])
    assert response.status_code == 400
    assert response.json()["error"].startswith("seed:")


def test_legacy_json(client: httpx.Client) -> None:
    response = client.post(
        LEGACY,
        json={
            "image_request": {
                "prompt": "a red bicycle",
                "model": "V_2A_TURBO",
                "aspect_ratio": "ASPECT_9_16",
                "magic_prompt_option": "OFF",
                "num_images": 2,
            }
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert spec.validate_response(body, legacy=True) == []
    first, second = body["data"]
    assert first["prompt"] == "a red bicycle" and first["resolution"] == "736x1312"
    assert 0 <= first["seed"] <= spec.SEED_MAX and first["seed"] == second["seed"]
    legacy_res = client.post(
        LEGACY, json={"image_request": {"prompt": "x", "resolution": "RESOLUTION_1024_640"}}
    )
    assert legacy_res.json()["data"][0]["resolution"] == "1024x640"


def test_legacy_rejects_v3_models(client: httpx.Client) -> None:
    for model in ("V_3", "AUTO"):
        response = client.post(LEGACY, json={"image_request": {"prompt": "x", "model": model}})
        assert response.status_code == 400
        assert "/v1/ideogram-v3/generate" in response.json()["error"]


def test_defaults_magic_prompt_and_auto_style(client: httpx.Client) -> None:
    short = generate(client, prompt="a cat")["data"][0]
    assert short["resolution"] == "1024x1024" and short["style_type"] == "GENERAL"
    assert short["prompt"].startswith("a cat") and short["prompt"] != "a cat"  # AUTO expands
    long_prompt = "an old stone bridge over a quiet river at dawn with mist and two swans"
    assert generate(client, prompt=long_prompt)["data"][0]["prompt"] == long_prompt
    auto = generate(client, prompt="a cat", style_type="AUTO")["data"][0]
    assert auto["style_type"] in spec.enum_values("StyleTypeV3") and auto["style_type"] != "AUTO"
    again = generate(client, prompt="a cat", style_type="AUTO")["data"][0]
    assert (again["prompt"], again["style_type"]) == (short["prompt"], auto["style_type"])


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "aspect_ratio": "16:9"}, "aspect_ratio"),
        ({"prompt": "x", "seed": 2147483648}, "seed"),
        ({"prompt": "x", "num_images": 9}, "num_images"),
        ({"prompt": "x", "aspect_ratio": "1x1", "resolution": "1024x1024"}, "aspect_ratio"),
        ({"prompt": "x", "magic_prompt_option": "ON"}, "magic_prompt_option"),
        ({"seed": 1}, "body"),
    ],
)
def test_invalid_bodies_are_400(
    client: httpx.Client, sim: Simulator, body: Any, field: str
) -> None:
    response = client.post(V3, json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(field)
    assert sim.stats.invalid_requests == [response.json()["error"]]
    assert sim.stats.billed_images == 0


@pytest.mark.parametrize(
    ("inner", "field"),
    [
        # The spec's prose limits, enforced from the capability table: a schema-valid body
        # that the model cannot take is refused, naming the field, and never billed.
        ({"model": "V_1", "style_type": "AUTO"}, "image_request.style_type"),
        ({"model": "V_2A", "negative_prompt": "blur"}, "image_request.negative_prompt"),
        ({"model": "V_2A_TURBO", "resolution": "RESOLUTION_1024_1024"}, "image_request.resolution"),
    ],
)
def test_legacy_models_refuse_fields_they_lack(
    client: httpx.Client, sim: Simulator, inner: dict[str, str], field: str
) -> None:
    response = client.post(LEGACY, json={"image_request": {"prompt": unique("x"), **inner}})
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}: not accepted by {inner['model']}")
    assert sim.stats.billed_images == 0
    takes = {**inner, "model": "V_2"}
    ok = client.post(LEGACY, json={"image_request": {"prompt": unique("x"), **takes}})
    assert ok.status_code == 200, ok.text


def test_prompt_limit_is_the_documented_one(client: httpx.Client) -> None:
    response = client.post(V3, json={"prompt": "x" * 10_001})
    assert response.status_code == 400
    assert response.json()["error"] == "prompt: longer than 10,000 characters"
    assert client.post(V3, json={"prompt": "x" * 10_000, "magic_prompt": "OFF"}).is_success


def test_unparseable_bodies_are_400(client: httpx.Client, sim: Simulator) -> None:
    assert client.post(V3, content=b"{", headers={"Content-Type": "application/json"}).is_error
    assert client.post(V3, content=b"x", headers={"Content-Type": "text/plain"}).status_code == 400
    assert client.post(LEGACY, json={"prompt": "not wrapped"}).status_code == 400
    assert sim.stats.requests_by_status[400] == 3


def test_api_key_is_required(sim: Simulator) -> None:
    sim.stats.reset()
    for headers in ({}, {"Api-Key": "wrong"}):
        for path, body in ((V3, {"prompt": "x"}), (LEGACY, {"image_request": {"prompt": "x"}})):
            response = httpx.post(f"{sim.base_url}{path}", json=body, headers=headers)
            assert response.status_code == 401
            assert "error" in response.json()
    assert sim.stats.requests_by_status[401] == 4 and sim.stats.billed_images == 0


# -- images --------------------------------------------------------------------------------


def _download(client: httpx.Client, **fields: Any) -> bytes:
    url = generate(client, **fields)["data"][0]["url"]
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert int(response.headers["content-length"]) == len(response.content)
    return response.content


def test_png_is_valid_and_scaled(client: httpx.Client) -> None:
    data = _download(client, prompt="a tall tower", aspect_ratio="9x16", seed=1)
    width, height, _ = parse_png(data)
    assert (width, height) == pixel_size("736x1312", 0.25) == (184, 328)


def test_bytes_are_deterministic(client: httpx.Client) -> None:
    base = {"prompt": "a quiet harbour", "seed": 5, "magic_prompt": "OFF", "style_type": "GENERAL"}
    first = _download(client, **base)
    assert _download(client, **base) == first
    variants = [
        {"seed": 6},
        {"prompt": "a quiet harbour at night"},
        {"style_type": "REALISTIC"},
        {"negative_prompt": "boats"},
        {"resolution": "1024x960"},
    ]
    seen = {first}
    for change in variants:
        seen.add(_download(client, **{**base, **change}))
    assert len(seen) == 1 + len(variants)
    legacy = client.post(
        LEGACY, json={"image_request": {**base, "model": "V_2", "magic_prompt_option": "OFF"}}
    )
    base_legacy = {k: v for k, v in base.items() if k != "magic_prompt"}
    assert legacy.status_code == 400  # magic_prompt is a v3 field: unknown on /generate
    legacy = client.post(
        LEGACY,
        json={"image_request": {**base_legacy, "model": "V_2", "magic_prompt_option": "OFF"}},
    )
    assert client.get(legacy.json()["data"][0]["url"]).content not in seen  # model differs


def test_rendering_is_deterministic_and_cheap() -> None:
    key = ImageKey(model="V_3", prompt="speed test", seed=3, resolution="1024x1024")
    render_png(ImageKey("V_3", "warm the band pool", 0, "1024x1024"), 1024, 1024)
    start = time.process_time()
    fresh = [render_png.__wrapped__(key, 1024, 1024) for _ in range(5)]  # bypass the LRU
    per_image_ms = (time.process_time() - start) / 5 * 1000
    assert len(set(fresh)) == 1
    assert 300_000 <= len(fresh[0]) <= 2_200_000
    assert parse_png(fresh[0])[:2] == (1024, 1024)
    assert per_image_ms < 50, f"{per_image_ms:.1f} ms per image"


@pytest.mark.parametrize("size", [(8, 8), (250, 130), (1312, 736)])
def test_odd_sizes_are_valid(size: tuple[int, int]) -> None:
    width, height = size
    assert parse_png(render_png(ImageKey("V_3", "odd", 1, "1x1"), width, height))[:2] == size


def test_tampered_urls_are_403(client: httpx.Client, sim: Simulator) -> None:
    url = generate(client, prompt="a locked door")["data"][0]["url"]
    path, query = url.split("?")
    exp, sig = (part.split("=")[1] for part in query.split("&"))
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    for bad in (
        f"{path}?exp={exp}&sig={flipped}",
        f"{path}?exp={int(exp) + 3600}&sig={sig}",
        f"{path.replace('.png', 'x.png')}?exp={exp}&sig={sig}",
        f"{path}?exp={exp}",
        f"{path}?exp=%C2%B2&sig={sig}",
    ):
        assert client.get(bad).status_code == 403, bad
    assert client.get(url).status_code == 200
    assert sim.stats.downloads_by_status[403] == 5 and sim.stats.downloads == 1


def test_urls_expire_after_the_ttl() -> None:
    with running_simulator(SimulatorConfig(url_ttl_s=1, image_scale=0.05)) as short:
        headers = {"Api-Key": short.api_key}
        body = httpx.post(f"{short.base_url}{V3}", json={"prompt": "x"}, headers=headers).json()
        url = body["data"][0]["url"]
        assert httpx.get(url).status_code == 200
        exp = int(url.split("exp=")[1].split("&")[0])
        time.sleep(max(0.0, exp - time.time()) + 0.05)
        response = httpx.get(url)
        assert response.status_code == 403 and "expired" in response.json()["error"]


# -- triggers ------------------------------------------------------------------------------


def test_trigger_parsing() -> None:
    triggers = Triggers.from_prompt("x [sim:unsafe] [sim:500x3] [sim:429] [sim:418] [sim:slow]")
    assert triggers.unsafe and triggers.slow and not triggers.corrupt
    assert triggers.failures == ((500, 3), (429, 1))
    assert [triggers.failure_for_attempt(n) for n in (1, 3, 4)] == [500, 500, None]
    assert Triggers.from_prompt("plain") == Triggers()


def test_unsafe_trigger_empties_urls_in_all_three_forms(
    client: httpx.Client, sim: Simulator
) -> None:
    body = generate(client, prompt=unique("x [sim:unsafe]"), num_images=3)
    assert spec.validate_response(body) == []
    forms = set()
    for item in body["data"]:
        assert item["is_image_safe"] is False
        forms.add(repr(item["url"]) if "url" in item else "absent")
    assert forms == {"None", "''", "absent"}
    assert sim.stats.billed_images == 3 and sim.stats.unsafe_images == 3


def test_422_is_not_billed(client: httpx.Client, sim: Simulator) -> None:
    prompt = unique("x [sim:422]")
    for _ in range(2):
        response = client.post(V3, json={"prompt": prompt})
        assert response.status_code == 422
        assert response.json()["error"].startswith("Prompt provided failed safety check")
    assert sim.stats.billed_images == 0


@pytest.mark.parametrize(("marker", "status", "failures"), [("500", 500, 1), ("500x3", 500, 3)])
def test_server_error_trigger_then_success(
    client: httpx.Client, sim: Simulator, marker: str, status: int, failures: int
) -> None:
    prompt = unique(f"x [sim:{marker}]")
    codes = [client.post(V3, json={"prompt": prompt}).status_code for _ in range(failures + 1)]
    assert codes == [status] * failures + [200]
    assert sim.stats.billed_images == 1


def test_429_and_503_triggers(client: httpx.Client, sim: Simulator) -> None:
    prompt = unique("x [sim:429]")
    first = client.post(V3, json={"prompt": prompt})
    assert first.status_code == 429
    assert first.json()["reject_reason"] == "inflight_limit"
    assert first.json()["max_inflight_requests"] == sim.config.max_inflight
    assert client.post(V3, json={"prompt": prompt}).status_code == 200
    assert client.post(V3, json={"prompt": unique("x [sim:503x2]")}).status_code == 503
    assert sim.stats.rate_limited == 1 and sim.stats.billed_images == 1


def test_expired_trigger(client: httpx.Client) -> None:
    url = generate(client, prompt=unique("x [sim:expired]"))["data"][0]["url"]
    assert client.get(url).status_code == 403


def test_slow_trigger(client: httpx.Client, sim: Simulator) -> None:
    start = time.monotonic()
    generate(client, prompt=unique("x [sim:slow]"))
    assert time.monotonic() - start >= sim.config.slow_latency_s


def test_corrupt_trigger_truncates_the_first_download(client: httpx.Client, sim: Simulator) -> None:
    body = generate(client, prompt=unique("x [sim:corrupt]"), num_images=2)
    for item in body["data"]:
        first, second = client.get(item["url"]), client.get(item["url"])
        assert first.status_code == second.status_code == 200
        assert len(first.content) < len(second.content)
        assert not first.content.endswith(b"IEND\xaeB`\x82")
        assert int(first.headers["content-length"]) == len(first.content)
        parse_png(second.content)
    assert sim.stats.corrupt_downloads == 2 and sim.stats.downloads == 4


# -- rates, billing, limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "statuses"),
    [("server_error_rate", {500, 503}), ("safety_reject_rate", {422}), ("unsafe_rate", {200})],
)
def test_rates(knob: str, statuses: set[int]) -> None:
    config = SimulatorConfig(**{knob: 1.0}, image_scale=0.05)  # type: ignore[arg-type]
    with running_simulator(config) as rated:
        url, headers = f"{rated.base_url}{V3}", {"Api-Key": rated.api_key}
        responses = [httpx.post(url, json={"prompt": "x"}, headers=headers) for _ in range(6)]
        assert {r.status_code for r in responses} <= statuses
        if knob == "unsafe_rate":
            assert all(not r.json()["data"][0]["is_image_safe"] for r in responses)
            assert rated.stats.billed_images == 6
        else:
            assert rated.stats.billed_images == 0


def test_rates_are_reproducible() -> None:
    def run() -> list[tuple[int, Any]]:
        config = SimulatorConfig(server_error_rate=0.5, random_seed=11, image_scale=0.05)
        with running_simulator(config) as rated:
            url, headers = f"{rated.base_url}{V3}", {"Api-Key": rated.api_key}
            out = []
            for _ in range(8):
                response = httpx.post(url, json={"prompt": "x"}, headers=headers)
                seed = response.json()["data"][0]["seed"] if response.status_code == 200 else None
                out.append((response.status_code, seed))
            return out

    first = run()
    assert first == run()
    assert {status for status, _ in first} > {200}


def test_billing_counters(client: httpx.Client, sim: Simulator) -> None:
    prompt = unique("billing")
    body = {"prompt": prompt, "seed": 42, "num_images": 2, "rendering_speed": "QUALITY"}
    generate(client, **body)
    generate(client, **body)
    client.post(LEGACY, json={"image_request": {"prompt": prompt, "model": "V_2A_TURBO"}})
    client.post(V3, json={"prompt": prompt, "seed": -1})  # 400: not billed
    stats = sim.stats.snapshot()
    assert stats["billed_images"] == 5 and stats["billed_requests"] == 3
    assert stats["billed_usd"] == pytest.approx(4 * 0.09 + 0.025)
    assert sim.stats.billed_by_prompt_seed[(prompt, 42)] == 4
    assert list(sim.stats.repeat_billed().values()) == [2]
    assert client.get("/sim/stats").json()["billed_images"] == 5
    assert client.post("/sim/reset").status_code == 200 and sim.stats.billed_images == 0


def test_inflight_limit_counts_images() -> None:
    config = SimulatorConfig(max_inflight=5, latency_s=0.4, image_scale=1.0)
    sizes = [2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1]

    async def burst(sim: Simulator) -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=sim.base_url, headers={"Api-Key": sim.api_key}
        ) as http:
            return list(
                await asyncio.gather(
                    *(
                        http.post(V3, json={"prompt": f"load {i}", "num_images": n})
                        for i, n in enumerate(sizes)
                    )
                )
            )

    with running_simulator(config) as limited:
        responses = asyncio.run(burst(limited))
        accepted = [n for n, r in zip(sizes, responses, strict=True) if r.status_code == 200]
        rejected = [r for r in responses if r.status_code == 429]
        assert {r.status_code for r in responses} == {200, 429}
        assert rejected[0].json() == {
            "error": rejected[0].json()["error"],
            "reject_reason": "inflight_limit",
            "max_inflight_requests": 5,
            "task_completion_speed": "fast",
        }
        stats = limited.stats
        assert stats.max_images_inflight_seen <= 5
        assert stats.rate_limited == len(rejected)
        assert stats.billed_images == sum(accepted)
        # Slots are released: a request fits again, and one larger than the limit never does.
        headers = {"Api-Key": limited.api_key}
        ok = httpx.post(
            f"{limited.base_url}{V3}", json={"prompt": "p", "num_images": 5}, headers=headers
        )
        assert ok.status_code == 200 and stats.images_inflight == 0
        too_big = httpx.post(
            f"{limited.base_url}{V3}", json={"prompt": "p", "num_images": 6}, headers=headers
        )
        assert too_big.status_code == 429
        # Full-size PNGs are the realistic size.
        png = httpx.get(ok.json()["data"][0]["url"]).content
        assert 300_000 <= len(png) <= 2_200_000 and parse_png(png)[:2] == (1024, 1024)


# -- lifecycle -----------------------------------------------------------------------------


def test_start_is_fast_and_stop_is_clean() -> None:
    start = time.monotonic()
    simulator = Simulator(SimulatorConfig(api_key="k")).start()
    assert time.monotonic() - start < 1.0
    assert simulator.api_key == "k" and simulator.base_url.startswith("http://127.0.0.1:")
    assert httpx.post(f"{simulator.base_url}{V3}", json={"prompt": "x"}).status_code == 401
    simulator.stop()
    name = f"ideogram-simulator-{simulator.port}"
    assert not [t for t in threading.enumerate() if t.name == name]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", simulator.port), timeout=1):
        pass


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unsafe_rate"):
        SimulatorConfig(unsafe_rate=1.5)
    with pytest.raises(ValueError, match="max_inflight"):
        SimulatorConfig(max_inflight=0)

"""Issue 18's generation controls: style presets and codes, colour palettes, transparency,
ideogram-4-5's quality, size and copyright detection.

Rows are parsed by the batch reader, bodies built by the client's own builders and checked
against Ideogram's published schemas (the trimmed copy) and the capability table's v2
routes; the end-to-end test sends them to the bundled simulator over loopback, which
validates each body the way the spec describes, and stores real PNGs.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.cli import main
from ideogram_pipeline.ideogram import spec
from ideogram_pipeline.ideogram.capabilities import V2_ROUTES
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.ideogram.prices import request_price
from ideogram_pipeline.ideogram.requests import (
    v2_body,
    v2_path,
    v3_fields,
    v3_multipart,
    v3_path,
)
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator

HEADER = (
    "prompt,model,style_preset,style_codes,color_palette,transparent,quality,size,"
    "enable_copyright_detection,style_type,resolution,rendering_speed"
)


def _rows(*lines: str) -> list[GenerationRequest | RejectedRow]:
    data = "\n".join([HEADER, *lines]) + "\n"
    return list(parse_batch(data.encode("utf-8"), source="controls.csv").rows)


def _one(line: str) -> GenerationRequest:
    (row,) = _rows(line)
    assert isinstance(row, GenerationRequest), getattr(row, "error", row)
    return row


def _form(request: GenerationRequest) -> dict[str, str | list[str]]:
    """The multipart parts as a server reads them: a repeated name becomes a list."""
    form: dict[str, str | list[str]] = {}
    for name, (_none, value) in v3_multipart(request):
        if name in form:
            before = form[name]
            form[name] = [*before, value] if isinstance(before, list) else [before, value]
        else:
            form[name] = value
    return form


def test_controls_are_read_into_canonical_values() -> None:
    row = _one("A poster,V_3,art deco,aaff5733|#0133FF57,#ff0000:0.5|00ff00,,,,,,,")
    assert row.style_preset == "ART_DECO"
    assert row.style_codes == ("AAFF5733", "0133FF57")
    assert row.color_palette == "#FF0000:0.5|#00FF00"
    preset = _one("A poster,V_3,,,Ember,,,,,,,")
    assert preset.color_palette == "EMBER"
    four_five = _one("A lamp,ideogram-4-5,,,,,Medium,1024 x 768,yes,,,")
    assert (four_five.quality, four_five.size) == ("MEDIUM", "1024x768")
    assert four_five.enable_copyright_detection is True
    transparent = _one("A mug,V_3,,,,true,,,,,,TURBO")
    assert transparent.transparent is True and transparent.rendering_speed == "TURBO"
    assert _one("A mug,V_3,,,,false,,,,,,").transparent is None


def test_requests_without_controls_keep_their_hashes() -> None:
    """Records written before issue 18 must still match their rows (nothing paid twice)."""
    request = GenerationRequest(row=1, prompt="A fox", seed=3)
    assert set(request.parameters()) == {
        "prompt",
        "model",
        "num_images",
        "negative_prompt",
        "style_type",
        "aspect_ratio",
        "resolution",
        "rendering_speed",
        "magic_prompt",
        "seed",
    }
    styled = GenerationRequest(row=1, prompt="A fox", seed=3, style_codes=("AAFF5733",))
    assert styled.request_hash() != request.request_hash()


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("a,V_3,,zz|AAFF5733,,,,,,,,", "style_codes", "'zz' is not a style code: 8 hex"),
        ("a,V_3,,AAFF5733,,,,,,DESIGN,,", "style_type", "cannot be used together"),
        ("a,V_3,noir,,,,,,,,,", "style_preset", "'noir' is not a style preset (80S_ILL"),
        ("a,V_3,,,#12345:0.5,,,,,,,", "color_palette", "'#12345' is not a colour #RRGGBB"),
        ("a,V_3,,,#123456:1.5,,,,,,,", "color_palette", "outside 0.05-1.0"),
        ("a,V_3,,,navy,,,,,,,", "color_palette", "a preset (EMBER, FRESH"),
        (
            "a,V_3,,," + "|".join(["#111111"] * 9) + ",,,,,,,",
            "color_palette",
            "has 9 colours; a palette has 1 to 8",
        ),
        ("a,V_2,,,EMBER,,,,,,,", "color_palette", "V_2 does not take color_palette"),
        ("a,V_2,,,,true,,,,,,", "transparent", "V_2 has no transparent background"),
        ("a,V_3,,,,maybe,,,,,,", "transparent", "'maybe' is not true or false"),
        ("a,V_3,,,EMBER,true,,,,,,", "color_palette", "cannot be used with transparent=true"),
        ("a,V_3,,,,true,,,,,1024x1024,", "resolution", "cannot be used with transparent=true"),
        ("a,ideogram-4-5,,,,,ultra,,,,,", "quality", "'ultra' is not one of low, medium, high"),
        ("a,ideogram-4-5,,,,,low,,,,,TURBO", "quality", "both set ideogram-4-5's quality"),
        ("a,V_3,,,,,low,,,,,", "quality", "V_3 does not take quality"),
        ("a,ideogram-4-5,,,,,,1000x768,,,,", "size", "multiples of 32"),
        ("a,ideogram-4-5,,,,,,4096x4096,,,,", "size", "at most 4,194,304"),
        ("a,ideogram-4-5,,,,,,2048x256,,,,", "size", "ratio is over 6:1"),
        ("a,ideogram-4-5,,,,,,128x128,,,,", "size", "at least 256"),
        ("a,V_3,,,,,,,true,,,", "enable_copyright_detection", "V_3 does not take"),
    ],
)
def test_each_bad_value_is_rejected_naming_row_field_and_what_is_allowed(
    line: str, field: str, needle: str
) -> None:
    (row,) = _rows(line)
    assert isinstance(row, RejectedRow), row
    assert (row.row, row.field) == (1, field)
    assert needle in row.reason, row.reason
    assert row.error.startswith(f"row 1: field '{field}': ")


CONTROL_ROWS = [
    "A poster,V_3,ART_DECO,AAFF5733|0133FF57,#FF0000:0.5|#00FF00:0.25,,,,,,,QUALITY",
    "A poster,V_3,,,PASTEL,,,,,GENERAL,1024x1024,",
    "A mug on nothing,V_3,,,,true,,,,,,TURBO",
    "A lamp,ideogram-4-5,,,,,medium,1024x768,true,,,",
    "A lamp,ideogram-4-5,,,,,,auto,,,,",
]


@pytest.mark.parametrize("line", CONTROL_ROWS)
def test_bodies_validate_against_the_spec_and_the_v2_routes(line: str) -> None:
    request = _one(line)
    if request.model == "V_3":
        schema = (
            "GenerateTransparentImageRequestV3" if request.transparent else "GenerateImageRequestV3"
        )
        assert spec.validate_v3_request(v3_fields(request), schema=schema) == []
        coerced = spec.coerce_multipart_fields(_form(request))
        assert spec.validate_v3_request(coerced, schema=schema) == []
        assert coerced == v3_fields(request)
        expected = "/v1/ideogram-v3/generate" + ("-transparent" if request.transparent else "")
        assert v3_path(request) == expected
    path = v2_path(request).rsplit("/", 1)[-1]
    body = v2_body(request)
    assert V2_ROUTES[path].wire_errors(body, path) == []
    if request.transparent:
        assert path == "ideogram-3-transparent"


def test_the_v2_routes_refuse_bad_structured_values() -> None:
    route = V2_ROUTES["ideogram-3"]
    bad = {
        "prompt": "x",
        "style_codes": ["AAFF573"],
        "color_palette": {"members": [{"color_hex": "#FF0000", "color_weight": 2}]},
    }
    errors = route.wire_errors(bad, "ideogram-3")
    assert any(e.startswith("style_codes: 'AAFF573'") for e in errors), errors
    assert any(e.startswith("color_palette: weight 2") for e in errors), errors
    four_five = V2_ROUTES["ideogram-4-5"]
    assert four_five.wire_errors({"prompt": "x", "size": "1000x1000"}, "ideogram-4-5") == [
        "size: sides must be multiples of 32"
    ]


def test_prices_follow_the_controls() -> None:
    assert request_price(_one("a,V_3,,,,true,,,,,,")) == 0.07
    assert request_price(_one("a,ideogram-4-5,,,,,low,,,,,")) == 0.03
    assert request_price(_one("a,ideogram-4-5,,,,,medium,,,,,")) == 0.06
    assert request_price(_one("a,ideogram-4-5,,,,,high,,,,,")) == 0.10
    assert request_price(_one("a,V_3,,,EMBER,,,,,,,QUALITY")) == 0.09


@pytest.mark.slow
@pytest.mark.parametrize("api_mode", ["sync", "async"])
def test_a_batch_of_every_control_runs_on_the_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_mode: str
) -> None:
    """The simulator validates every body (multipart parts included) and answers; the
    transparent image is stored as an RGBA PNG with transparent pixels."""
    # Sync mode sends ideogram-4-5 rows through client.generate, which has no v2 branch
    # (issue 16's area): they run here in async mode only, and keep their row numbers.
    plain = "A plain lamp,V_3,,,,,,,,,,"
    rows = [plain if api_mode == "sync" and "4-5" in row else row for row in CONTROL_ROWS]
    rows.append("A rejected one,V_3,,zz,,,,,,,,")
    batch = tmp_path / "controls.csv"
    batch.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    with running_simulator(SimulatorConfig(latency_s=0, image_scale=0.25)) as sim:
        for name in ("AWS_ENDPOINT_URL", "IDEOGRAM_PROMPTS_DIR"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("IDEOGRAM_API_KEY", sim.api_key)
        monkeypatch.setenv("IDEOGRAM_BASE_URL", sim.base_url)
        monkeypatch.setenv("IDEOGRAM_API_MODE", api_mode)
        monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
        (tmp_path / "home").mkdir()
        result = CliRunner().invoke(main, ["run", str(batch)])
        assert result.exit_code == 0, result.output
        stats = sim.stats.snapshot()
    assert stats["invalid_requests"] == [] and stats["billed_images"] == 5
    con = history.connect(load_settings())
    try:
        found = con.execute(
            "SELECT row, status, cost_usd, stored_uri FROM generations ORDER BY row"
        ).fetchall()
    finally:
        con.close()
    statuses = {row: status for row, status, _cost, _uri in found}
    assert statuses == {
        1: "stored",
        2: "stored",
        3: "stored",
        4: "stored",
        5: "stored",
        6: "rejected",
    }
    costs = {row: cost for row, _status, cost, _uri in found}
    assert (costs[1], costs[3]) == (0.09, 0.07)
    # 4.5 at medium quality, then at its default (high); the plain V_3 rows at DEFAULT.
    assert (costs[4], costs[5]) == ((0.06, 0.10) if api_mode == "async" else (0.06, 0.06))
    # The usage report breaks cost down by product.
    from ideogram_pipeline.reports.usage import build_report
    from ideogram_pipeline.storage import open_store

    settings = load_settings()
    report = build_report(settings, open_store(settings))
    by_product = report.by_dimension["product"].set_index("key")["cost_usd"].round(4).to_dict()
    # Rows 1-2 (V_3 with a palette: 0.09 at QUALITY, 0.06), 3 transparent, 4-5: 4.5 at
    # medium and at its default (async) or plain V_3 rows (sync).
    if api_mode == "async":
        expected = {"standard": 0.25, "transparent background": 0.07, "4.5 quality medium": 0.06}
    else:
        expected = {"standard": 0.27, "transparent background": 0.07}
    assert {k: v for k, v in by_product.items() if v} == expected
    transparent_uri = next(uri for row, _s, _c, uri in found if row == 3)
    with Image.open(io.BytesIO(Path(transparent_uri.removeprefix("file://")).read_bytes())) as png:
        assert png.mode == "RGBA"
        assert png.getpixel((0, 0))[3] == 0  # a corner is transparent
        assert png.getpixel((png.width // 2, png.height // 2))[3] == 255


def test_dry_run_quotes_price_each_quality_tier(tmp_path: Path) -> None:
    """The cost guard asks Ideogram (here the simulator) for 4.5's tiers as tiers, and keeps
    the table's price for what a quote cannot name (a transparent row)."""
    import asyncio

    from ideogram_pipeline.ideogram.client import IdeogramClient
    from ideogram_pipeline.runs.cost_guard import estimate_cost, quote_unit_prices

    batch = parse_batch(
        "\n".join(
            [
                HEADER,
                "a,ideogram-4-5,,,,,low,,,,,",
                "b,ideogram-4-5,,,,,medium,,,,,",
                "c,ideogram-4-5,,,,,,,,,,QUALITY",
                "d,V_3,,,,true,,,,,,",
            ]
        ).encode(),
        source=str(tmp_path / "q.csv"),
    )
    with running_simulator(SimulatorConfig(latency_s=0)) as sim:

        async def go() -> dict[tuple[str, str | None], float]:
            async with IdeogramClient(sim.base_url, sim.api_key) as client:
                return await quote_unit_prices(client, batch.requests)

        quotes = asyncio.run(go())
        assert sim.stats.billed_images == 0
    assert quotes == {
        ("ideogram-4-5", "LOW"): 0.03,
        ("ideogram-4-5", "MEDIUM"): 0.06,
        ("ideogram-4-5", "QUALITY"): 0.10,
    }
    estimate = estimate_cost(batch, {}, unit_prices=quotes)
    assert estimate.usd == pytest.approx(0.03 + 0.06 + 0.10 + 0.07)

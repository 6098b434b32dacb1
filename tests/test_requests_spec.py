"""Every request body the client builds validates against Ideogram's published schemas.

Nothing is faked: the bodies come from the client's own builders, and the schemas are the
trimmed copy derived from Ideogram's OpenAPI spec (scripts/derive_request_schemas.py).
"""

from __future__ import annotations

import itertools

import pytest

from ideogram_pipeline.ideogram import spec
from ideogram_pipeline.ideogram.generation import LEGACY_MODELS, GenerationRequest
from ideogram_pipeline.ideogram.requests import legacy_body, v3_fields, v3_multipart

ASPECT_RATIOS_V3 = spec.enum_values("AspectRatioV3")
RENDERING_SPEEDS = spec.enum_values("RenderingSpeed")
STYLE_TYPES_V3 = spec.enum_values("StyleTypeV3")
# Canonical "16x9" forms of the legacy endpoint's ASPECT_16_9 enum.
LEGACY_ASPECT_RATIOS = [
    "x".join(value.removeprefix("ASPECT_").split("_")) for value in spec.enum_values("AspectRatio")
]

V3_REQUESTS = [
    GenerationRequest(row=1, prompt="a lighthouse at dusk"),
    GenerationRequest(
        row=2,
        prompt="poster with the words 'Grand Opening'",
        num_images=4,
        seed=2147483647,
        aspect_ratio="16x9",
        rendering_speed="QUALITY",
        magic_prompt="OFF",
        style_type="DESIGN",
        negative_prompt="blurry, watermark",
    ),
    GenerationRequest(row=3, prompt="ein Fuchs im Schnee 🦊", resolution="1280x800", seed=0),
]


@pytest.mark.parametrize("request_", V3_REQUESTS, ids=lambda r: f"row{r.row}")
def test_v3_bodies_match_the_spec(request_: GenerationRequest) -> None:
    assert spec.validate_v3_request(v3_fields(request_)) == []
    # The multipart parts carry the same fields, as strings, which the spec's types accept
    # once coerced the way a server reads a form.
    form = {name: value for name, (_none, value) in v3_multipart(request_)}
    assert spec.validate_v3_request(spec.coerce_multipart_fields(form)) == []


def test_every_v3_enum_combination_validates() -> None:
    for ratio, speed, style in itertools.product(
        ASPECT_RATIOS_V3, RENDERING_SPEEDS, STYLE_TYPES_V3
    ):
        request = GenerationRequest(
            row=1, prompt="x", aspect_ratio=ratio, rendering_speed=speed, style_type=style
        )
        assert spec.validate_v3_request(v3_fields(request)) == [], (ratio, speed, style)


@pytest.mark.parametrize("model", LEGACY_MODELS)
def test_legacy_bodies_match_the_spec(model: str) -> None:
    for ratio in LEGACY_ASPECT_RATIOS:
        request = GenerationRequest(
            row=1,
            prompt="a red bicycle",
            model=model,
            aspect_ratio=ratio,
            magic_prompt="ON",
            seed=42,
            num_images=2,
        )
        body = legacy_body(request)
        assert spec.validate_legacy_request(body) == [], (model, ratio)
        assert body["image_request"]["aspect_ratio"].startswith("ASPECT_")


def test_legacy_resolution_uses_the_legacy_spelling() -> None:
    body = legacy_body(GenerationRequest(row=1, prompt="x", model="V_2", resolution="1024x1024"))
    assert body["image_request"]["resolution"] == "RESOLUTION_1024_1024"
    assert spec.validate_legacy_request(body) == []


def test_the_validator_is_not_a_rubber_stamp() -> None:
    bad = v3_fields(GenerationRequest(row=1, prompt="x", aspect_ratio="7x3"))
    assert spec.validate_v3_request(bad)
    assert spec.validate_v3_request({"prompt": "x", "seed": 2147483648})
    both = v3_fields(
        GenerationRequest(row=1, prompt="x", aspect_ratio="1x1", resolution="1024x1024")
    )
    assert spec.validate_v3_request(both)

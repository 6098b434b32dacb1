"""The capability table: derived from the bundled schema, and read by every consumer.

Nothing is faked and nothing skips: the table comes from the shipped ``request_schemas.json``;
bodies come from the client's own builders and are checked by the bundled JSON Schema (v3,
legacy) or by the route the simulator enforces (v2); CSV rows go through the production
validator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from ideogram_pipeline.batches.columns import NATIVE_COLUMNS
from ideogram_pipeline.batches.rows import validate_cells
from ideogram_pipeline.ideogram import spec
from ideogram_pipeline.ideogram.capabilities import (
    CAPABILITIES,
    LEGACY_MODELS,
    LEGACY_V2_PATHS,
    MODELS,
    V2_ROUTES,
    capability,
    models_taking,
)
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.ideogram.requests import (
    V2_MODEL_PATHS,
    fits_v2,
    legacy_body,
    v2_body,
    v3_fields,
)

SCHEMA_OF = {"v3": "GenerateImageRequestV3", "legacy": "ImageRequest"}


def test_models_are_the_spec_models_plus_the_v2_ones() -> None:
    spec_models = spec.enum_values("ModelEnum")
    assert tuple(m for m in spec_models if m not in ("V_3", "AUTO")) == LEGACY_MODELS
    assert ("V_3", "ideogram-4", "ideogram-4-5", *LEGACY_MODELS) == MODELS
    assert set(CAPABILITIES) == set(MODELS)
    with pytest.raises(KeyError, match="known: V_3"):
        capability("V_9")


@pytest.mark.parametrize("model", ["V_3", *LEGACY_MODELS])
def test_schema_routes_carry_the_schema_enums_and_bounds(model: str) -> None:
    route = capability(model).route
    schema = SCHEMA_OF[route.endpoint]
    for rule in route.rules:
        assert rule.source.startswith(f"{schema}.{rule.wire_name}")
        prop = spec.property_schema(schema, rule.wire_name)
        if "enum" in prop:
            assert rule.wire_choices == tuple(prop["enum"])
            assert tuple(wire for _canonical, wire in rule.choices) == rule.wire_choices
        elif prop.get("type") == "integer":
            assert (rule.minimum, rule.maximum) == (prop["minimum"], prop["maximum"])
    # Canonical spellings: the legacy ASPECT_16_9 enum is the 16x9 form, like V_3's.
    ratio = route.rule("aspect_ratio")
    assert ratio is not None and "16x9" in ratio.values and "ASPECT_16_9" not in ratio.values


def test_legacy_models_take_what_the_spec_prose_says() -> None:
    limits = spec.model_limits()
    assert limits, "x-model-limits missing from the bundled schema"
    for model in LEGACY_MODELS:
        for field, models in limits.items():
            assert capability(model).takes(field) == (model in models), (model, field)
    assert not capability("V_2").takes("rendering_speed")  # not an ImageRequest property


def test_every_rule_names_its_source() -> None:
    for cap in CAPABILITIES.values():
        for route in (cap.route, cap.v2_route):
            for rule in route.rules if route else ():
                assert rule.source, (cap.model, rule.name)


def _requests(model: str) -> Iterator[GenerationRequest]:
    """One request per value of every choice field the model takes, plus the bounds."""
    route = capability(model).route
    base = GenerationRequest(row=1, prompt="x" * 10_000, model=model)
    for name in ("seed", "num_images"):
        rule = route.rule(name)
        assert rule is not None and rule.minimum is not None and rule.maximum is not None
        yield replace(base, **{name: rule.minimum})
        yield replace(base, **{name: rule.maximum})
    for rule in route.rules:
        if rule.kind == "choice" and rule.name in NATIVE_COLUMNS:
            for value in rule.values:
                yield replace(base, **{rule.name: value})


@pytest.mark.parametrize("model", MODELS)
def test_every_value_the_table_allows_builds_a_body_the_endpoint_takes(model: str) -> None:
    cap = capability(model)
    for request in _requests(model):
        if cap.route.endpoint == "v3":
            assert spec.validate_v3_request(v3_fields(request)) == [], request
        elif cap.route.endpoint == "legacy":
            assert spec.validate_legacy_request(legacy_body(request)) == [], request
            assert cap.route.wire_errors(legacy_body(request)["image_request"], model) == []
        if cap.v2_route is not None:
            # Only legacy rows setting a v1-only field (V_2's resolution) stay synchronous.
            assert fits_v2(request) or (model in LEGACY_V2_PATHS and request.resolution)
            if not fits_v2(request):
                continue
            path = V2_MODEL_PATHS[model]
            assert cap.v2_route is V2_ROUTES[path]
            assert cap.v2_route.wire_errors(v2_body(request), path) == [], request


@pytest.mark.parametrize("model", MODELS)
def test_csv_accepts_every_value_the_table_allows(model: str) -> None:
    for request in _requests(model):
        cells = {
            name: str(value)
            for name, value in request.parameters().items()
            if value is not None and name in NATIVE_COLUMNS
        }
        row = validate_cells(1, cells)
        assert isinstance(row, GenerationRequest), (cells, row)
        assert row.parameters() == request.parameters()


def test_v2_spellings_come_from_the_table() -> None:
    four_five = [
        v2_body(GenerationRequest(row=1, prompt="x", model="ideogram-4-5", rendering_speed=s))
        for s in ("TURBO", "DEFAULT", "QUALITY")
    ]
    assert [body.get("quality") for body in four_five] == ["low", None, "high"]
    assert all("rendering_speed" not in body for body in four_five)
    four = v2_body(GenerationRequest(row=1, prompt="x", model="ideogram-4", resolution="2048x2048"))
    assert four["resolution"] == "2048x2048"
    legacy = legacy_body(GenerationRequest(row=1, prompt="x", model="V_2", magic_prompt="ON"))
    assert legacy["image_request"]["magic_prompt_option"] == "ON"


def test_a_field_the_model_lacks_is_never_dropped_silently() -> None:
    with pytest.raises(ValueError, match="does not take resolution"):
        v2_body(GenerationRequest(row=1, prompt="x", model="ideogram-4-5", resolution="1024x1024"))
    with pytest.raises(ValueError, match="does not take style_type"):
        legacy_body(GenerationRequest(row=1, prompt="x", model="V_1", style_type="AUTO"))


def test_csv_refuses_what_a_v2_model_lacks() -> None:
    row = validate_cells(1, {"prompt": "p", "model": "ideogram-4-5", "resolution": "1024x1024"})
    assert isinstance(row, RejectedRow) and row.field == "resolution"
    assert "only V_3, ideogram-4, V_2, V_2_TURBO do" in row.reason


def test_wire_errors_name_each_field() -> None:
    route = V2_ROUTES["ideogram-4"]
    body = {
        "prompt": " ",
        "aspect_ratio": "16x9",
        "num_images": 9,
        "seed": -1,
        "async": "yes",
        "rendering_speed": "flash",
    }
    errors = route.wire_errors(body, "ideogram-4")
    assert [error.split(":")[0] for error in errors] == [
        "aspect_ratio",
        "prompt",
        "num_images",
        "seed",
        "async",
        "rendering_speed",
    ]
    assert errors[0] == "aspect_ratio: not accepted by ideogram-4"
    assert route.wire_errors({"prompt": "x"}, "ideogram-4") == []
    assert route.wire_errors({"seed": 1}, "ideogram-4") == ["prompt: required, a non-empty string"]
    both = {"prompt": "x", "aspect_ratio": "1x1", "resolution": "1024x1024"}
    assert V2_ROUTES["ideogram-3"].wire_errors(both, "ideogram-3") == [
        "aspect_ratio+resolution: aspect_ratio cannot be used in conjunction with resolution"
    ]


def test_models_taking() -> None:
    assert models_taking("resolution", "1024x640") == ("V_2", "V_2_TURBO")
    assert models_taking("aspect_ratio", "4x5") == ("V_3",)
    assert models_taking("resolution", "2048x2048") == ("ideogram-4",)
    assert models_taking("rendering_speed") == ("V_3", "ideogram-4", "ideogram-4-5")

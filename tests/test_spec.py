"""The trimmed request schema and the validators built on it.

Nothing is faked. When ``../shared/reference/ideogram-openapi.json`` is present the shipped
``request_schemas.json`` must be exactly what ``scripts/derive_request_schemas.py`` makes of
it, and the enums must equal the spec's: an extra check that a user's clone without
``../shared`` skips. Everything else, including the drift tests of CSV validation
(``tests/test_batches.py``) and of the capability table (``tests/test_capabilities.py``),
reads the shipped file and always runs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ideogram_pipeline.ideogram import spec

PROJECT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT / "scripts" / "derive_request_schemas.py"
SHIPPED = PROJECT / "ideogram_pipeline" / "ideogram" / "request_schemas.json"
REFERENCE = PROJECT.parent / "shared" / "reference" / "ideogram-openapi.json"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_file(), reason=f"reference spec not present at {REFERENCE}"
)

ENUMS = (
    "AspectRatioV3",
    "AspectRatio",
    "ResolutionV3",
    "Resolution",
    "StyleTypeV3",
    "StyleType",
    "RenderingSpeed",
    "MagicPromptOption",
    "ModelEnum",
)


def _load_script() -> ModuleType:
    module_spec = importlib.util.spec_from_file_location("derive_request_schemas", SCRIPT)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    # Registered first, as an import would: the script's dataclasses look their module up.
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module


# -- the derived file ----------------------------------------------------------------------


@needs_reference
def test_shipped_schema_is_what_the_script_derives() -> None:
    derived = _load_script().derive_file(REFERENCE)
    assert SHIPPED.read_text(encoding="utf-8") == derived, (
        "request_schemas.json is stale: run .venv/bin/python scripts/derive_request_schemas.py"
    )


@needs_reference
@pytest.mark.parametrize("name", ENUMS)
def test_enum_values_are_the_specs(name: str) -> None:
    openapi = json.loads(REFERENCE.read_text(encoding="utf-8"))
    assert spec.enum_values(name) == tuple(openapi["components"]["schemas"][name]["enum"])


def test_schema_is_self_contained() -> None:
    document = spec.schema_document()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document["$defs"])
    assert refs, "expected $refs between the copied schemas"
    for ref in refs:
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in document["$defs"]
    text = SHIPPED.read_text(encoding="utf-8")
    assert '"description"' not in text and '"example"' not in text


def test_derive_rewrites_openapi_idioms() -> None:
    derive = _load_script().derive
    openapi = {
        "info": {"title": "t", "version": "1"},
        "components": {"schemas": {name: {"type": "object"} for name in _load_script().ROOTS}},
    }
    openapi["components"]["schemas"]["GenerateImageRequestV3"] = {
        "type": "object",
        "description": "dropped",
        "properties": {
            "note": {"type": "string", "nullable": True, "example": "x"},
            "kind": {"$ref": "#/components/schemas/Kind"},
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        },
    }
    openapi["components"]["schemas"]["Kind"] = {"type": "string", "enum": ["A"], "nullable": True}
    derived = derive(openapi, limits=(), image_parts=())
    assert derived["x-model-limits"] == {}
    defs = derived["$defs"]
    request = defs["GenerateImageRequestV3"]
    assert "description" not in request
    assert request["properties"]["note"] == {"type": ["string", "null"]}
    assert request["properties"]["kind"] == {"$ref": "#/$defs/Kind"}
    assert request["properties"]["files"]["items"] == {"type": "string"}
    assert defs["Kind"] == {"type": ["string", "null"], "enum": ["A", None]}


def test_prose_limits_are_kept_as_data_and_checked_against_the_words() -> None:
    script = _load_script()
    limit = script.MODEL_LIMITS[0]
    openapi = {
        "info": {},
        "components": {
            "schemas": {
                **{name: {"type": "object"} for name in script.ROOTS},
                "ImageRequest": {
                    "type": "object",
                    "properties": {"negative_prompt": {"description": limit.spec_says}},
                },
            }
        },
    }
    assert script.derive(openapi, limits=(limit,), image_parts=())["x-model-limits"] == {
        limit.field: {
            "models": list(limit.models),
            "described_at": limit.described_at,
            "spec_says": limit.spec_says,
        }
    }
    openapi["components"]["schemas"]["ImageRequest"]["properties"]["negative_prompt"] = {
        "description": "Available for every model."
    }
    with pytest.raises(ValueError, match="no longer says"):
        script.derive(openapi, limits=(limit,), image_parts=())
    # The shipped file carries them, and the reader hands them out as tuples.
    assert spec.model_limits() == {
        "negative_prompt": ("V_1", "V_1_TURBO", "V_2", "V_2_TURBO"),
        "style_type": ("V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO"),
        "resolution": ("V_2", "V_2_TURBO"),
    }


# -- enums and bounds ----------------------------------------------------------------------


def test_enum_values_known_members() -> None:
    assert "16x9" in spec.enum_values("AspectRatioV3")
    assert "ASPECT_16_9" in spec.enum_values("AspectRatio")
    assert "1024x1024" in spec.enum_values("ResolutionV3")
    assert "RESOLUTION_1024_1024" in spec.enum_values("Resolution")
    assert spec.enum_values("RenderingSpeed") == (
        "FLASH",
        "TURBO",
        "BALANCED",
        "DEFAULT",
        "QUALITY",
    )
    assert spec.enum_values("MagicPromptOption") == ("AUTO", "ON", "OFF")
    assert {"V_1", "V_2A_TURBO", "V_3"} <= set(spec.enum_values("ModelEnum"))
    for name in ENUMS:
        assert spec.enum_values(name)


def test_enum_values_rejects_non_enums() -> None:
    with pytest.raises(ValueError, match="not an enum"):
        spec.enum_values("GenerateImageRequestV3")
    with pytest.raises(ValueError, match="AspectRatioV3"):
        spec.enum_values("NoSuchThing")


def test_bounds_come_from_the_schema() -> None:
    assert (spec.SEED_MIN, spec.SEED_MAX) == (0, 2147483647)
    assert (spec.NUM_IMAGES_MIN, spec.NUM_IMAGES_MAX) == (1, 8)
    assert spec.v3_fields()[0] == "prompt"


# -- validation ----------------------------------------------------------------------------

VALID_V3 = {
    "prompt": "a lighthouse at dusk",
    "seed": 2147483647,
    "aspect_ratio": "16x9",
    "rendering_speed": "QUALITY",
    "magic_prompt": "OFF",
    "negative_prompt": "blur",
    "num_images": 8,
    "style_type": "DESIGN",
    "style_preset": "ART_DECO",
    "color_palette": {"members": [{"color_hex": "#AABBCC", "color_weight": 0.5}]},
}


def test_valid_v3_request() -> None:
    assert spec.validate_v3_request(VALID_V3) == []
    assert spec.validate_v3_request({"prompt": "x"}) == []
    assert spec.validate_v3_request({"prompt": "x", "style_codes": ["AAFF5733"]}) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"aspect_ratio": "16:9"}, "aspect_ratio"),
        ({"seed": 2147483648}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": "12"}, "seed"),
        ({"num_images": 9}, "num_images"),
        ({"num_images": 0}, "num_images"),
        ({"rendering_speed": "FAST"}, "rendering_speed"),
        ({"style_type": "ANIME"}, "style_type"),  # a legacy-only style
        ({"resolution": "1024x1024"}, "aspect_ratio+resolution"),
        ({"style_codes": ["AAFF5733"]}, "style_codes+style_type"),
        ({"style_codes": ["nothex!!"], "style_type": None}, "style_codes.0"),
        ({"color_palette": {"name": "NEON"}}, "color_palette.name"),
        ({"aspectratio": "16x9"}, "aspectratio"),
    ],
)
def test_invalid_v3_request_names_the_field(change: dict[str, Any], field: str) -> None:
    body = {**VALID_V3, **change}
    body = {key: value for key, value in body.items() if value is not None}
    errors = spec.validate_v3_request(body)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{field}:"), errors


def test_missing_prompt_and_non_object() -> None:
    assert spec.validate_v3_request({}) == ["body: 'prompt' is a required property"]
    assert spec.validate_v3_request(["prompt"])
    assert spec.validate_v3_request({"prompt": "x", "extra": 1}, allow_unknown=True) == []


def test_legacy_request() -> None:
    body = {
        "image_request": {
            "prompt": "a red bicycle",
            "model": "V_2A_TURBO",
            "aspect_ratio": "ASPECT_16_9",
            "magic_prompt_option": "ON",
            "seed": 42,
            "num_images": 2,
            "style_type": "ANIME",
        }
    }
    assert spec.validate_legacy_request(body) == []
    bad = {"image_request": {**body["image_request"], "resolution": "RESOLUTION_1024_1024"}}
    assert spec.validate_legacy_request(bad) == [
        "image_request.aspect_ratio+resolution: "
        "aspect_ratio cannot be used in conjunction with resolution"
    ]
    errors = spec.validate_legacy_request({"image_request": {"prompt": "x", "model": "V_9"}})
    assert errors and errors[0].startswith("image_request.model: 'V_9' is not a valid ModelEnum")
    assert spec.validate_legacy_request({"prompt": "x"})  # not wrapped in image_request
    assert spec.validate_legacy_request({"image_request": {"prompt": "x", "aspect_ratio": "16x9"}})


def test_coerce_multipart_fields() -> None:
    form: dict[str, str | list[str]] = {
        "prompt": "a cat",
        "seed": "12",
        "num_images": " 3 ",
        "style_codes": "AAFF5733",
        "color_palette": '{"name": "PASTEL"}',
        "magic_prompt": "ON",
        "unknown": "kept",
    }
    body = spec.coerce_multipart_fields(form)
    assert body == {
        "prompt": "a cat",
        "seed": 12,
        "num_images": 3,
        "style_codes": ["AAFF5733"],
        "color_palette": {"name": "PASTEL"},
        "magic_prompt": "ON",
        "unknown": "kept",
    }
    assert spec.coerce_multipart_fields({"style_codes": ["AAFF5733", "0133FF57"]}) == {
        "style_codes": ["AAFF5733", "0133FF57"]
    }
    # Unparseable values stay strings so the validator names the field and the problem.
    loose = spec.coerce_multipart_fields({"prompt": "x", "seed": "abc", "color_palette": "{"})
    errors = spec.validate_v3_request(loose)
    assert [e.split(":")[0] for e in errors] == ["color_palette", "seed"]
    # A repeated scalar is not silently reduced to one value.
    assert spec.validate_v3_request(spec.coerce_multipart_fields({"prompt": ["a", "b"]}))


def test_validate_response() -> None:
    item = {
        "prompt": "p",
        "resolution": "1024x1024",
        "is_image_safe": True,
        "seed": 1,
        "url": "https://x/y.png",
        "style_type": "GENERAL",
    }
    body = {"created": "2000-01-23T04:56:07+00:00", "data": [item, {**item, "url": None}]}
    assert spec.validate_response(body) == []
    assert spec.validate_response(body, legacy=True) == []
    assert spec.validate_response({"data": []})
    assert spec.validate_response({**body, "data": [{**item, "resolution": "1x1"}]})


def test_image_part_limits_are_the_specs_words() -> None:
    script = _load_script()
    openapi = {
        "info": {},
        "components": {"schemas": {name: {"type": "object"} for name in script.ROOTS}},
    }
    with pytest.raises(ValueError, match="no longer says"):
        script.derive(openapi, limits=())
    # The shipped file carries every operation's part; remove-background's is hand-written.
    assert spec.image_part("UpscaleImageRequest") == spec.ImagePart("image_file", 10 * 2**20)
    assert spec.image_part("RemoveBackgroundRequestV2") == spec.ImagePart("image", 25 * 2**20)
    hand_written = spec.schema_document()["x-hand-written"]
    assert set(hand_written) == {name for name in script.HAND_WRITTEN}
    assert all(url.startswith("https://developer.ideogram.ai/") for url in hand_written.values())
    assert set(spec.OPERATION_SCHEMAS.values()) <= set(spec.schema_document()["x-image-parts"])

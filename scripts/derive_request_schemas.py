"""Derive the trimmed JSON Schema of Ideogram's generate requests from the published OpenAPI.

Why: a user's clone has no ``../shared/reference/``, yet the project needs the spec's facts
(field names, enums, bounds) at run time and in tests. This script copies just the schemas
the pipeline sends or receives into ``ideogram_pipeline/ideogram/request_schemas.json``,
rewritten as a self-contained JSON Schema (draft 2020-12, ``$defs``), so the facts stay
traceable to the spec (its title, version and sha256 are recorded) and refreshable by
running this script again:

    .venv/bin/python scripts/derive_request_schemas.py [OPENAPI_JSON] [--out PATH]

Rewrites: ``#/components/schemas/X`` -> ``#/$defs/X``; OpenAPI ``nullable: true`` -> a type
union with ``"null"``; ``format: binary`` (multipart uploads) -> a plain string; descriptions,
examples, titles and vendor extensions dropped. The output is deterministic (spec order,
``$defs`` sorted by name), so a test can compare it byte for byte with a fresh derivation.

Three facts the spec states only in prose (which legacy models take ``negative_prompt``,
``style_type`` and ``resolution``) are kept as data under ``x-model-limits``, each with the
spec's own words; so is the size limit of each operation's image part (issue 19: "max size
10MB" on ``/upscale``, ``/describe``, remix, reframe, replace-background), under
``x-image-parts``. Derivation fails when those words are no longer in the spec, so a changed
rule is read by a person instead of being copied silently.

Remove-background is not in the bundled spec. Its request and response schemas are written
by hand in :data:`HAND_WRITTEN` from Ideogram's current documentation (each carries a
``$comment`` with the page it was read from) and merged into ``$defs``; ``x-hand-written``
lists them, so nobody mistakes them for derived facts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = PROJECT_ROOT.parent / "shared" / "reference" / "ideogram-openapi.json"
DEFAULT_OUT = PROJECT_ROOT / "ideogram_pipeline" / "ideogram" / "request_schemas.json"

#: Schemas the pipeline needs; everything they reference is copied too.
ROOTS = (
    "GenerateImageRequestV3",
    # Issue 18: transparent backgrounds (POST /v1/ideogram-v3/generate-transparent).
    "GenerateTransparentImageRequestV3",
    "GenerateImageRequest",
    "ImageRequest",
    # Response shapes, so the simulator (and its tests) can prove it answers like the spec.
    "ImageGenerationResponseV3",
    "GenerateImageResponse",
    "GenerateImageSafetyError",
    # Issue 19: operations on stored images (multipart, with an image part) and their answers.
    "UpscaleImageRequest",
    "DescribeRequest",
    "DescribeResponse",
    "RemixImageRequestV3",
    "ReframeImageRequestV3",
    "ReplaceBackgroundRequestV3",
)

_V1_REMOVE_BACKGROUND = "https://developer.ideogram.ai/v1/api-reference/tools/remove-background"
_V2_REMOVE_BACKGROUND = (
    "https://developer.ideogram.ai/api-reference/images/remove-background/ideogram-1"
)
_MB = 1024 * 1024

#: Schemas the bundled spec lacks, written by hand from Ideogram's documentation (issue 19).
HAND_WRITTEN: dict[str, dict[str, Any]] = {
    # POST /v1/remove-background: "a multipart form containing a file", image (file, required)
    "RemoveBackgroundRequest": {
        "$comment": f"Not in the bundled spec: written by hand from {_V1_REMOVE_BACKGROUND}",
        "type": "object",
        "properties": {"image": {"type": "string"}},
        "required": ["image"],
    },
    # POST /v2/image/remove-background/ideogram-1: image, private, async (dry_run: query).
    "RemoveBackgroundRequestV2": {
        "$comment": f"Not in the bundled spec: written by hand from {_V2_REMOVE_BACKGROUND}",
        "type": "object",
        "properties": {
            "image": {"type": "string"},
            "private": {"type": "boolean"},
            "async": {"type": "boolean"},
        },
        "required": ["image"],
    },
    # "A list containing the single foreground image. The endpoint always returns exactly
    # one entry." The item's fields beyond url and is_image_safe are not documented.
    "RemoveBackgroundImageObject": {
        "$comment": f"Not in the bundled spec: written by hand from {_V1_REMOVE_BACKGROUND}",
        "type": "object",
        "properties": {
            "url": {"type": ["string", "null"], "format": "uri"},
            "resolution": {"type": "string", "pattern": "^\\d{2,5}x\\d{2,5}$"},
            "is_image_safe": {"type": "boolean"},
        },
        "required": ["is_image_safe"],
    },
    "RemoveBackgroundResponse": {
        "$comment": f"Not in the bundled spec: written by hand from {_V1_REMOVE_BACKGROUND}",
        "type": "object",
        "properties": {
            "created": {"type": "string", "format": "date-time"},
            "data": {
                "type": "array",
                "items": {"$ref": "#/$defs/RemoveBackgroundImageObject"},
                "minItems": 1,
                "maxItems": 1,
            },
        },
        "required": ["created", "data"],
    },
}

#: Keywords that carry validation meaning; everything else (description, example, ...) goes.
KEPT_KEYWORDS = frozenset(
    {
        "type",
        "enum",
        "const",
        "default",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "required",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
        "properties",
        "additionalProperties",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "$ref",
    }
)

#: Formats that mean nothing to a JSON validator (multipart file parts).
DROPPED_FORMATS = frozenset({"binary", "byte"})

_COMPONENT_PREFIX = "#/components/schemas/"


@dataclass(frozen=True)
class ModelLimit:
    """A legacy ``ImageRequest`` field that only some models take, as the spec words it."""

    field: str  # the ImageRequest property
    described_at: str  # where the sentence is: "Schema" or "Schema.property"
    models: tuple[str, ...]
    spec_says: str


#: The spec's prose limits on ``POST /generate`` fields, per model (see the module docstring).
MODEL_LIMITS = (
    ModelLimit(
        "negative_prompt",
        "ImageRequest.negative_prompt",
        ("V_1", "V_1_TURBO", "V_2", "V_2_TURBO"),
        "Only available for model versions V_1, V_1_TURBO, V_2 and V_2_TURBO.",
    ),
    ModelLimit(
        "style_type",
        "StyleType",
        ("V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO"),
        "this is only applicable for models V_2 and above and should not be specified for "
        "model versions V_1.",
    ),
    ModelLimit(
        "resolution",
        "Resolution",
        ("V_2", "V_2_TURBO"),
        "(For model_version for 2.0 only, cannot be used in conjunction with aspect_ratio)",
    ),
)


@dataclass(frozen=True)
class ImagePartLimit:
    """The image file part of an operation's request and its size limit, as the spec words it."""

    schema: str
    part: str
    max_bytes: int
    spec_says: str


_TEN_MB_WORDS = "(max size 10MB); only JPEG, WebP and PNG formats are supported"

#: The spec's prose limits on each operation's image part (see the module docstring).
IMAGE_PARTS = (
    ImagePartLimit("UpscaleImageRequest", "image_file", 10 * _MB, _TEN_MB_WORDS),
    ImagePartLimit("DescribeRequest", "image_file", 10 * _MB, _TEN_MB_WORDS),
    ImagePartLimit("RemixImageRequestV3", "image", 10 * _MB, _TEN_MB_WORDS),
    ImagePartLimit("ReframeImageRequestV3", "image", 10 * _MB, _TEN_MB_WORDS),
    ImagePartLimit("ReplaceBackgroundRequestV3", "image", 10 * _MB, _TEN_MB_WORDS),
)
#: The hand-written schemas' image parts, in the documentation's words (not checked).
HAND_WRITTEN_IMAGE_PARTS = (
    ImagePartLimit("RemoveBackgroundRequest", "image", 25 * _MB, "(max size 25MB)"),
    ImagePartLimit(
        "RemoveBackgroundRequestV2", "image", 25 * _MB, "JPEG, PNG, or WebP, up to 25MB"
    ),
)


def _ref_name(ref: str) -> str:
    if not ref.startswith(_COMPONENT_PREFIX):
        raise ValueError(f"unsupported $ref {ref!r}: only {_COMPONENT_PREFIX}* is resolved")
    return ref[len(_COMPONENT_PREFIX) :]


def _convert(schema: dict[str, Any], found: set[str]) -> dict[str, Any]:
    """Trim one OpenAPI schema object into JSON Schema, collecting referenced names."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in KEPT_KEYWORDS:
            continue
        if key == "$ref":
            name = _ref_name(value)
            found.add(name)
            out[key] = f"#/$defs/{name}"
        elif key == "properties":
            out[key] = {prop: _convert(sub, found) for prop, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _convert(value, found)
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [_convert(sub, found) for sub in value]
        elif key == "format" and value in DROPPED_FORMATS:
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True:
        out = _make_nullable(out)
    return out


def _make_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0 ``nullable: true`` as JSON Schema: add ``null`` to the allowed types."""
    if "$ref" in schema or "type" not in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    out = dict(schema)
    out["type"] = [*types, "null"] if "null" not in types else types
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    return out


def _description(components: dict[str, Any], where: str) -> str:
    schema, _, prop = where.partition(".")
    node = components.get(schema, {})
    if prop:
        node = node.get("properties", {}).get(prop, {})
    return " ".join(str(node.get("description", "")).split())


def _model_limits(components: dict[str, Any], wanted: tuple[ModelLimit, ...]) -> dict[str, Any]:
    """``x-model-limits``: each prose limit as data, checked against the spec's words."""
    limits: dict[str, Any] = {}
    for limit in wanted:
        if limit.spec_says not in _description(components, limit.described_at):
            raise ValueError(
                f"the spec no longer says {limit.spec_says!r} at {limit.described_at}: "
                "re-read it and update MODEL_LIMITS"
            )
        limits[limit.field] = {
            "models": list(limit.models),
            "described_at": limit.described_at,
            "spec_says": limit.spec_says,
        }
    return limits


def _image_parts(components: dict[str, Any], wanted: tuple[ImagePartLimit, ...]) -> dict[str, Any]:
    """``x-image-parts``: each operation's image part and size limit, the spec's words checked
    (the hand-written ones are taken as written)."""
    parts: dict[str, Any] = {}
    for limit in (*wanted, *HAND_WRITTEN_IMAGE_PARTS):
        described_at = f"{limit.schema}.{limit.part}"
        checked = limit not in HAND_WRITTEN_IMAGE_PARTS
        if checked and limit.spec_says not in _description(components, described_at):
            raise ValueError(
                f"the spec no longer says {limit.spec_says!r} at {described_at}: "
                "re-read it and update IMAGE_PARTS"
            )
        parts[limit.schema] = {
            "part": limit.part,
            "max_bytes": limit.max_bytes,
            "described_at": described_at,
            "spec_says": limit.spec_says,
        }
    return parts


def derive(
    openapi: dict[str, Any],
    source_sha256: str | None = None,
    limits: tuple[ModelLimit, ...] = MODEL_LIMITS,
    image_parts: tuple[ImagePartLimit, ...] = IMAGE_PARTS,
) -> dict[str, Any]:
    """Return the trimmed, self-contained JSON Schema document for :data:`ROOTS`."""
    components = openapi["components"]["schemas"]
    defs: dict[str, Any] = {}
    pending = list(ROOTS)
    while pending:
        name = pending.pop()
        if name in defs:
            continue
        if name not in components:
            raise KeyError(f"schema {name!r} not found in the OpenAPI document")
        found: set[str] = set()
        defs[name] = _convert(components[name], found)
        pending.extend(sorted(found - defs.keys()))
    defs.update(HAND_WRITTEN)
    info = openapi.get("info", {})
    source: dict[str, Any] = {
        "document": "ideogram-openapi.json",
        "title": info.get("title"),
        "version": info.get("version"),
        "roots": list(ROOTS),
    }
    if source_sha256:
        source["sha256"] = source_sha256
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "Generated by scripts/derive_request_schemas.py; do not edit by hand.",
        "x-derived-from": source,
        "x-model-limits": _model_limits(components, limits),
        "x-image-parts": _image_parts(components, image_parts),
        "x-hand-written": {
            name: schema["$comment"].removeprefix("Not in the bundled spec: written by hand from ")
            for name, schema in HAND_WRITTEN.items()
        },
        "$defs": dict(sorted(defs.items())),
    }


def render(document: dict[str, Any]) -> str:
    """Serialise deterministically: spec order within schemas, ``$defs`` sorted by name."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def derive_file(source: Path) -> str:
    """Read an OpenAPI JSON file and return the rendered trimmed schema text."""
    raw = source.read_bytes()
    return render(derive(json.loads(raw), hashlib.sha256(raw).hexdigest()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"error: OpenAPI file not found: {args.source}", file=sys.stderr)
        return 1
    text = derive_file(args.source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    count = len(json.loads(text)["$defs"])
    print(f"wrote {args.out} ({count} schemas, {len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

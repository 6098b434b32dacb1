"""Ideogram's request rules, read from the trimmed JSON Schema shipped with the package.

Why a schema file and not hand-written checks: ``request_schemas.json`` is derived by
``scripts/derive_request_schemas.py`` from Ideogram's published OpenAPI document, so field
names, enums and bounds have one traceable source. This module reads it and validates whole
bodies with it (the simulator does, and tests do for every body the client builds); the
per-model view that CSV validation, request building and the simulator share is derived
from it in :mod:`ideogram_pipeline.ideogram.capabilities`.

Beyond the schema, two documented cross-field rules are enforced (see
:data:`CROSS_FIELD_RULES`), and unknown fields are reported by default: the real API may
ignore a misspelt field silently, which is exactly the bug a test should catch.

Issue 19's operations on stored images (upscale, describe, remix, reframe, replace and
remove background) are read the same way: :data:`OPERATION_SCHEMAS` names each request
schema, :func:`validate_request` checks a body against any of them, and :func:`image_part`
gives the file part that carries the source image and its size limit (``x-image-parts``,
the spec's words kept as data). Remove-background is not in the bundled spec: its schemas
are hand-written into the derived file from Ideogram's documentation (``x-hand-written``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

__all__ = [
    "CROSS_FIELD_RULES",
    "NUM_IMAGES_MAX",
    "NUM_IMAGES_MIN",
    "OPERATION_RESPONSES",
    "OPERATION_SCHEMAS",
    "SEED_MAX",
    "SEED_MIN",
    "ImagePart",
    "coerce_multipart_fields",
    "enum_values",
    "image_part",
    "model_limits",
    "property_schema",
    "schema_document",
    "v3_fields",
    "validate_legacy_request",
    "validate_operation_response",
    "validate_request",
    "validate_response",
    "validate_v3_request",
]

SCHEMA_RESOURCE = "request_schemas.json"

#: Pairs of fields the spec says cannot be combined, with the spec's wording as the reason.
CROSS_FIELD_RULES: tuple[tuple[str, str, str], ...] = (
    ("aspect_ratio", "resolution", "aspect_ratio cannot be used in conjunction with resolution"),
    ("style_codes", "style_type", "style_codes cannot be used in conjunction with style_type"),
)

#: The request schema of each operation on a stored image (issue 19), by operation name.
OPERATION_SCHEMAS: Mapping[str, str] = {
    "upscale": "UpscaleImageRequest",
    "describe": "DescribeRequest",
    "remix": "RemixImageRequestV3",
    "reframe": "ReframeImageRequestV3",
    "replace_background": "ReplaceBackgroundRequestV3",
    "remove_background": "RemoveBackgroundRequest",
}
#: The schema of each operation's 200 answer (upscale answers the legacy generate shape).
OPERATION_RESPONSES: Mapping[str, str] = {
    "upscale": "GenerateImageResponse",
    "describe": "DescribeResponse",
    "remix": "ImageGenerationResponseV3",
    "reframe": "ImageGenerationResponseV3",
    "replace_background": "ImageGenerationResponseV3",
    "remove_background": "RemoveBackgroundResponse",
}

#: Enum values are listed in full up to this many; longer lists are cut in messages.
_ENUM_LIST_LIMIT = 20


@cache
def schema_document() -> dict[str, Any]:
    """The derived JSON Schema document (``$defs`` holds every schema by its spec name)."""
    text = (
        resources.files("ideogram_pipeline")
        .joinpath("ideogram", SCHEMA_RESOURCE)
        .read_text("utf-8")
    )
    document: dict[str, Any] = json.loads(text)
    return document


def _defs() -> dict[str, Any]:
    defs: dict[str, Any] = schema_document()["$defs"]
    return defs


@cache
def _validator(name: str) -> Draft202012Validator:
    document = schema_document()
    schema = {"$schema": document["$schema"], "$defs": document["$defs"], "$ref": f"#/$defs/{name}"}
    return Draft202012Validator(schema)


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        schema = _defs()[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _enum_name(error: ValidationError) -> str | None:
    """Name of the ``$defs`` enum an error came from, for a friendlier message."""
    for name, definition in _defs().items():
        if definition.get("enum") == error.validator_value:
            return name
    return None


def _format_error(error: ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path) or "body"
    if error.validator == "enum":
        enum_values: list[Any] = list(error.validator_value)  # type: ignore[arg-type]
        allowed = [str(value) for value in enum_values]
        shown = ", ".join(allowed[:_ENUM_LIST_LIMIT])
        if len(allowed) > _ENUM_LIST_LIMIT:
            shown += f", ... ({len(allowed)} values)"
        enum = _enum_name(error)
        kind = f"a valid {enum}" if enum else "an allowed value"
        return f"{where}: {error.instance!r} is not {kind} (one of {shown})"
    if error.validator in ("oneOf", "anyOf") and error.context:
        # "is not valid under any of the given schemas" names no field; the closest
        # alternative's own error does (e.g. color_palette.name: 'X' is not ...): the
        # deepest error belongs to the alternative the caller most likely meant.
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        return _format_error(deepest)
    return f"{where}: {error.message}"


def _schema_errors(name: str, body: Any) -> list[str]:
    errors = sorted(_validator(name).iter_errors(body), key=lambda e: list(map(str, e.path)))
    return [_format_error(error) for error in errors]


def _unknown_fields(body: Mapping[str, Any], schema_name: str, prefix: str = "") -> list[str]:
    known = _resolve(_defs()[schema_name]).get("properties", {})
    return [
        f"{prefix}{field}: unknown field (not in {schema_name})"
        for field in sorted(body)
        if field not in known
    ]


def _cross_field_errors(body: Mapping[str, Any], prefix: str = "") -> list[str]:
    return [
        f"{prefix}{first}+{second}: {reason}"
        for first, second, reason in CROSS_FIELD_RULES
        if body.get(first) is not None and body.get(second) is not None
    ]


def validate_v3_request(
    body: Any, *, allow_unknown: bool = False, schema: str = "GenerateImageRequestV3"
) -> list[str]:
    """Errors for a ``POST /v1/ideogram-v3/generate`` body; an empty list means valid.

    ``schema`` names another 3.0 request schema with the same encoding (issue 18:
    ``GenerateTransparentImageRequestV3``). Each error starts with the field path, so
    callers can name the field to a user.
    """
    errors = _schema_errors(schema, body)
    if isinstance(body, Mapping):
        if not allow_unknown:
            errors += _unknown_fields(body, schema)
        errors += _cross_field_errors(body)
    return errors


def validate_legacy_request(body: Any, *, allow_unknown: bool = False) -> list[str]:
    """Errors for a legacy ``POST /generate`` body, i.e. ``{"image_request": {...}}``."""
    errors = _schema_errors("GenerateImageRequest", body)
    if isinstance(body, Mapping):
        if not allow_unknown:
            errors += _unknown_fields(body, "GenerateImageRequest")
        inner = body.get("image_request")
        if isinstance(inner, Mapping):
            if not allow_unknown:
                errors += _unknown_fields(inner, "ImageRequest", prefix="image_request.")
            errors += _cross_field_errors(inner, prefix="image_request.")
    return errors


def _nested_unknown_fields(body: Mapping[str, Any], schema_name: str) -> list[str]:
    """Unknown fields inside properties that are objects of their own (upscale's JSON part
    ``image_request``), named by their path."""
    errors: list[str] = []
    for field, prop in _resolve(_defs()[schema_name]).get("properties", {}).items():
        ref = prop.get("$ref", "")
        inner = body.get(field)
        if ref and isinstance(inner, Mapping) and "properties" in _resolve(prop):
            errors += _unknown_fields(inner, ref.rsplit("/", 1)[-1], prefix=f"{field}.")
    return errors


def validate_request(schema: str, body: Any, *, allow_unknown: bool = False) -> list[str]:
    """Errors for a body of the request schema ``schema`` (any of :data:`OPERATION_SCHEMAS`,
    or a generate schema); an empty list means valid.

    Multipart file parts stand in as placeholder strings (``multipart.py``). Unknown fields
    are reported at the top level and inside object properties (``image_request.x``), and
    the cross-field rules apply wherever both fields are present.
    """
    errors = _schema_errors(schema, body)
    if isinstance(body, Mapping):
        if not allow_unknown:
            errors += _unknown_fields(body, schema) + _nested_unknown_fields(body, schema)
        errors += _cross_field_errors(body)
    return errors


def validate_operation_response(operation: str, body: Any) -> list[str]:
    """Errors for a 200 answer of ``operation`` (see :data:`OPERATION_RESPONSES`)."""
    return _schema_errors(OPERATION_RESPONSES[operation], body)


@dataclass(frozen=True)
class ImagePart:
    """The multipart file part that carries an operation's source image, and its limit."""

    name: str
    max_bytes: int


def image_part(schema: str) -> ImagePart:
    """The source image part of request schema ``schema`` (``x-image-parts``): ``image_file``
    of at most 10 MB on ``/upscale``, ``image`` of at most 25 MB on remove-background, ..."""
    parts: dict[str, Any] = schema_document()["x-image-parts"]
    if schema not in parts:
        raise ValueError(f"{schema!r} takes no source image; known: {', '.join(sorted(parts))}")
    return ImagePart(name=parts[schema]["part"], max_bytes=int(parts[schema]["max_bytes"]))


def validate_response(body: Any, *, legacy: bool = False) -> list[str]:
    """Errors for a 200 generate response against the spec's response schema."""
    return _schema_errors("GenerateImageResponse" if legacy else "ImageGenerationResponseV3", body)


def enum_values(name: str) -> tuple[str, ...]:
    """The allowed values of a spec enum, e.g. ``enum_values("AspectRatioV3")``."""
    definition = _defs().get(name)
    if definition is None or "enum" not in definition:
        known = sorted(n for n, d in _defs().items() if "enum" in d)
        raise ValueError(f"{name!r} is not an enum in the spec; known enums: {', '.join(known)}")
    return tuple(definition["enum"])


def property_schema(schema: str, field: str) -> Mapping[str, Any]:
    """One property of a ``$defs`` schema with its ``$ref`` followed, e.g. the
    ``AspectRatioV3`` enum for ``property_schema("GenerateImageRequestV3", "aspect_ratio")``."""
    properties: Mapping[str, Any] = _defs()[schema]["properties"]
    return _resolve(properties[field])


def model_limits() -> dict[str, tuple[str, ...]]:
    """Legacy ``ImageRequest`` fields only some models take -> those models.

    The spec says these in prose only; the derive script keeps them as data with the spec's
    words (``x-model-limits``) and fails when the words change.
    """
    limits: dict[str, Any] = schema_document().get("x-model-limits", {})
    return {field: tuple(limit["models"]) for field, limit in limits.items()}


def v3_fields() -> tuple[str, ...]:
    """Field names ``GenerateImageRequestV3`` declares, in the spec's order."""
    return tuple(_defs()["GenerateImageRequestV3"]["properties"])


def _property_bound(schema: str, field: str, bound: str) -> int:
    value = _defs()[schema]["properties"][field][bound]
    return int(value)


#: Seed bounds the spec declares (the same for both endpoints).
SEED_MIN = _property_bound("GenerateImageRequestV3", "seed", "minimum")
SEED_MAX = _property_bound("GenerateImageRequestV3", "seed", "maximum")
#: ``num_images`` bounds the spec declares.
NUM_IMAGES_MIN = _property_bound("GenerateImageRequestV3", "num_images", "minimum")
NUM_IMAGES_MAX = _property_bound("GenerateImageRequestV3", "num_images", "maximum")


def _declared_kind(schema: Mapping[str, Any]) -> str:
    """``integer``, ``number``, ``boolean``, ``array``, ``json`` (objects) or ``string``."""
    schema = _resolve(schema)
    declared = schema.get("type")
    if isinstance(declared, list):
        declared = next((t for t in declared if t != "null"), None)
    if declared in ("integer", "number", "boolean", "array", "string"):
        return str(declared)
    if declared == "object" or any(k in schema for k in ("oneOf", "anyOf", "properties")):
        return "json"
    return "string"


def _coerce_scalar(value: str, kind: str) -> Any:
    """Convert one form value; leave it a string when it does not parse, so the validator
    reports the type error with the field's name instead of this function guessing."""
    text = value.strip()
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            return float(text)
        if kind == "json":
            return json.loads(text)
    except ValueError:
        return value
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def coerce_multipart_fields(
    form: Mapping[str, str | list[str]], schema: str = "GenerateImageRequestV3"
) -> dict[str, Any]:
    """Turn multipart/form-data strings into the types the request schema ``schema``
    declares (by default the V3 generate schema; an operation's schema for its routes).

    Multipart carries only strings: ``seed=42`` arrives as ``"42"``, ``style_codes`` as
    repeated parts, ``color_palette`` as a JSON part. Converting by the schema's declared
    types lets a multipart body be validated exactly like a JSON one. Unknown fields pass
    through unchanged (the validator reports them); a repeated scalar field stays a list,
    so it fails validation instead of one value being picked silently.
    """
    properties = _resolve(_defs()[schema])["properties"]
    result: dict[str, Any] = {}
    for field, raw in form.items():
        values = raw if isinstance(raw, list) else [raw]
        if field not in properties:
            result[field] = raw
            continue
        kind = _declared_kind(properties[field])
        if kind == "array":
            item_kind = _declared_kind(_resolve(properties[field]).get("items", {}))
            result[field] = [_coerce_scalar(v, item_kind) for v in values]
        elif len(values) == 1:
            result[field] = _coerce_scalar(values[0], kind)
        else:
            result[field] = [_coerce_scalar(v, kind) for v in values]
    return result

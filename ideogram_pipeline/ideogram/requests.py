"""Turning a validated :class:`GenerationRequest` into the exact body each endpoint takes.

Canonical forms live in the records (``16x9``, ``1024x1024``, ``TURBO``); endpoint spellings
(``ASPECT_16_9``, ``magic_prompt_option``, v2's lower-case ``turbo``, 4.5's ``quality``) come
from the capability table, so a body carries exactly the fields its route takes, spelt its
way. The functions are public so a test can validate every body against Ideogram's schemas.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ideogram_pipeline.ideogram.capabilities import (
    CAPABILITIES,
    LEGACY_PATH,
    V3_MODEL,
    V3_PATH,
    Route,
    capability,
)
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.references import WIRE_NAMES

__all__ = [
    "LEGACY_PATH",
    "V2_MODEL_PATHS",
    "V3_PATH",
    "Part",
    "fits_v2",
    "form_parts",
    "legacy_body",
    "v2_body",
    "v2_multipart",
    "v2_path",
    "v3_fields",
    "v3_multipart",
    "v3_path",
]

#: Request attributes that choose the endpoint rather than fill a body field.
_ROUTING_FIELDS = frozenset({"model", "transparent", "references"})

V2_GENERATIONS_PATH = "/v2/generations"

#: Our model names -> the v2 model path (``V_3`` rows go to ``ideogram-3`` on the v2 API).
V2_MODEL_PATHS: dict[str, str] = {
    model: cap.v2_route.path.rsplit("/", 1)[-1]
    for model, cap in CAPABILITIES.items()
    if cap.v2_route is not None
}


def _wire_fields(request: GenerationRequest, route: Route) -> dict[str, Any]:
    """The route's fields from ``request``, in the route's names and spellings; unset values
    (and values whose spelling is "leave it out") are omitted, never sent empty.

    A set field the route does not take raises instead of being dropped: dropping it would
    pay for a different image than the one asked for, and validation should have refused it.
    """
    parameters = request.parameters()
    refused = [
        name
        for name, value in parameters.items()
        if value is not None and name not in _ROUTING_FIELDS and route.rule(name) is None
    ]
    if refused:
        raise ValueError(
            f"row {request.row}: {request.model} on {route.path} does not take {', '.join(refused)}"
        )
    fields: dict[str, Any] = {}
    for rule in route.rules:
        value = parameters.get(rule.name)
        if value is None:
            continue
        wire = rule.to_wire(value)
        if wire is not None:
            fields[rule.wire_name] = wire
    return fields


def fits_v2(request: GenerationRequest) -> bool:
    """Whether ``request`` can go to a v2 path of its model as it is: the model has one, and
    the row sets no field that path lacks (a V_2 row with a v1 ``resolution`` stays on the
    synchronous legacy endpoint rather than losing the field).

    The routing fields choose the path (:func:`v2_path`): a transparent row goes to
    ``ideogram-3-transparent``, style references to ``ideogram-3``, a character reference
    to ``ideogram-3-character``. No v2 path takes both kinds of reference, so a row mixing
    them stays on ``POST /v1/ideogram-v3/generate``, which does.
    """
    route = _v2_route_or_none(request)
    if route is None:
        return False
    roles = {image.role for image in request.references or ()}
    return all(
        value is None or name in _ROUTING_FIELDS or route.rule(name) is not None
        for name, value in request.parameters().items()
    ) and all(route.rule(WIRE_NAMES[role]) is not None for role in roles)


def _has_character(request: GenerationRequest) -> bool:
    return any(image.role != "style" for image in request.references or ())


def _v2_route_or_none(request: GenerationRequest) -> Route | None:
    cap = capability(request.model)
    if request.transparent:
        return cap.v2_transparent_route
    if _has_character(request):
        return cap.v2_character_route
    return cap.v2_route


def _v2_route(request: GenerationRequest) -> Route:
    route = _v2_route_or_none(request)
    if route is None:
        kind = "transparent v2" if request.transparent else "v2"
        if _has_character(request):
            kind = "character-reference v2"
        raise ValueError(f"model {request.model} has no {kind} path")
    return route


def _v3_route(request: GenerationRequest) -> Route:
    """``generate``, or ``generate-transparent`` for a transparent row."""
    cap = capability(V3_MODEL)
    if request.transparent:
        assert cap.transparent_route is not None
        return cap.transparent_route
    return cap.route


def v3_path(request: GenerationRequest) -> str:
    """The v1 path a non-legacy row is sent to."""
    return _v3_route(request).path


def v2_path(request: GenerationRequest) -> str:
    return _v2_route(request).path


def v2_body(request: GenerationRequest, *, asynchronous: bool = True) -> dict[str, Any]:
    """The JSON body of ``POST /v2/image/generate/{model}``: lowercase enums, ``async``."""
    if request.references:
        raise ValueError(f"row {request.row}: reference images go as multipart (v2_multipart)")
    return {**_wire_fields(request, _v2_route(request)), "async": asynchronous}


def v3_fields(request: GenerationRequest) -> dict[str, Any]:
    """Fields of ``GenerateImageRequestV3``; unset values are omitted, not sent empty."""
    return _wire_fields(request, _v3_route(request))


#: One multipart part: ``(name, (filename, content[, media type]))``.
Part = tuple[str, tuple[None, str] | tuple[str, bytes, str]]


def form_parts(
    fields: dict[str, Any],
    request: GenerationRequest,
    read_reference: Callable[[str], bytes] | None,
) -> list[Part]:
    """``fields`` as multipart/form-data parts, then one file part per reference image.

    A list (``style_codes``) is one part per item, an object (``color_palette``) a JSON
    part, a boolean (v2's ``async``) ``true``/``false``; each reference image is a file
    part named by its role (``style_reference_images``, ...) whose bytes ``read_reference``
    reads by storage key (``references/<sha256>.<ext>``), named ``<sha256>.<ext>`` so the
    same bytes make the same body whatever file they came from.
    """
    parts: list[Part] = []
    for key, value in fields.items():
        if isinstance(value, list):
            parts += [(key, (None, str(item))) for item in value]
        elif isinstance(value, dict):
            parts.append((key, (None, json.dumps(value, separators=(",", ":")))))
        elif isinstance(value, bool):
            parts.append((key, (None, "true" if value else "false")))
        else:
            parts.append((key, (None, str(value))))
    for image in request.references or ():
        if read_reference is None:
            raise ValueError(f"row {request.row}: reference images but nothing to read them")
        content = read_reference(image.key)
        filename = f"{image.sha256}.{image.extension}"
        parts.append((image.wire_name, (filename, content, image.media_type)))
    return parts


def v3_multipart(
    request: GenerationRequest, read_reference: Callable[[str], bytes] | None = None
) -> list[Part]:
    """The v3 fields as multipart/form-data parts (the endpoint's documented encoding),
    reference images as file parts (see :func:`form_parts`)."""
    return form_parts(v3_fields(request), request, read_reference)


def v2_multipart(
    request: GenerationRequest,
    read_reference: Callable[[str], bytes] | None = None,
    *,
    asynchronous: bool = True,
) -> list[Part]:
    """``POST /v2/image/generate/{model}`` as multipart/form-data, for rows with reference
    images (v2 notes §1: "Source images ... go in multipart/form-data"): the same fields
    and spellings as :func:`v2_body`, ``async`` a form field, and the images as file parts
    named as on v1 (``style_reference_images``, ``character_reference_images[_mask]``)."""
    fields = {**_wire_fields(request, _v2_route(request)), "async": asynchronous}
    return form_parts(fields, request, read_reference)


def legacy_body(request: GenerationRequest) -> dict[str, Any]:
    """``GenerateImageRequest`` for ``POST /generate``: ``{"image_request": {...}}``."""
    fields = _wire_fields(request, capability(request.model).route)
    return {"image_request": {"model": request.model, **fields}}

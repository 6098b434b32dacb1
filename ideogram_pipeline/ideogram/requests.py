"""Turning a validated :class:`GenerationRequest` into the exact body each endpoint takes.

Canonical forms live in the records (``16x9``, ``1024x1024``, ``TURBO``); endpoint spellings
(``ASPECT_16_9``, ``magic_prompt_option``, v2's lower-case ``turbo``, 4.5's ``quality``) come
from the capability table, so a body carries exactly the fields its route takes, spelt its
way. The functions are public so a test can validate every body against Ideogram's schemas.
"""

from __future__ import annotations

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

__all__ = [
    "LEGACY_PATH",
    "V2_MODEL_PATHS",
    "V3_PATH",
    "fits_v2",
    "legacy_body",
    "v2_body",
    "v2_path",
    "v3_fields",
    "v3_multipart",
]

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
        if value is not None and name != "model" and route.rule(name) is None
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
    """Whether ``request`` can go to its model's v2 path as it is: the model has one, and
    the row sets no field that path lacks (a V_2 row with a v1 ``resolution`` stays on the
    synchronous legacy endpoint rather than losing the field)."""
    route = capability(request.model).v2_route
    if route is None:
        return False
    return all(
        value is None or name == "model" or route.rule(name) is not None
        for name, value in request.parameters().items()
    )


def _v2_route(request: GenerationRequest) -> Route:
    route = capability(request.model).v2_route
    if route is None:
        raise ValueError(f"model {request.model} has no v2 path")
    return route


def v2_path(request: GenerationRequest) -> str:
    return _v2_route(request).path


def v2_body(request: GenerationRequest, *, asynchronous: bool = True) -> dict[str, Any]:
    """The JSON body of ``POST /v2/image/generate/{model}``: lowercase enums, ``async``."""
    return {**_wire_fields(request, _v2_route(request)), "async": asynchronous}


def v3_fields(request: GenerationRequest) -> dict[str, Any]:
    """Fields of ``GenerateImageRequestV3``; unset values are omitted, not sent empty."""
    return _wire_fields(request, capability(V3_MODEL).route)


def v3_multipart(request: GenerationRequest) -> list[tuple[str, tuple[None, str]]]:
    """The v3 fields as multipart/form-data parts (the endpoint's documented encoding)."""
    return [(key, (None, str(value))) for key, value in v3_fields(request).items()]


def legacy_body(request: GenerationRequest) -> dict[str, Any]:
    """``GenerateImageRequest`` for ``POST /generate``: ``{"image_request": {...}}``."""
    fields = _wire_fields(request, capability(request.model).route)
    return {"image_request": {"model": request.model, **fields}}

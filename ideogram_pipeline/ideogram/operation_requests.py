"""An operation row (:attr:`GenerationRequest.operation`) as the multipart body its endpoint
takes: the fields in the endpoint's names and spellings, then the source image as a file.

Remix, reframe and replace-background spell their 3.0 fields as ``V_3`` generation does, so
those spellings come from the capability table; upscale wraps its fields in a JSON
``image_request`` part with the legacy ``magic_prompt_option`` name, as the spec's
``UpscaleInitialImageRequest`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ideogram_pipeline.ideogram.capabilities import V3_MODEL, capability
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.operations import Operation, operation
from ideogram_pipeline.ideogram.requests import Part, form_parts

__all__ = ["operation_fields", "operation_parts", "operation_path"]

#: Upscale's fields inside its ``image_request`` part, by request attribute.
_UPSCALE_NAMES = {
    "prompt": "prompt",
    "resemblance": "resemblance",
    "detail": "detail",
    "magic_prompt": "magic_prompt_option",
    "num_images": "num_images",
    "seed": "seed",
}


def operation_path(request: GenerationRequest, *, asynchronous: bool = False) -> str:
    """The path ``request`` goes to: the v2 one when sent asynchronously (only operations
    that document one are)."""
    op = operation(request.operation)
    if asynchronous:
        if op.v2_path is None:
            raise ValueError(f"row {request.row}: {op.name} has no asynchronous (v2) path")
        return op.v2_path
    return op.path


def operation_fields(request: GenerationRequest) -> dict[str, Any]:
    """The operation's form fields (without the image); unset values are omitted.

    A set attribute the operation does not take raises, as for generation: validation
    should have refused it, and dropping it would pay for something else than was asked.
    """
    op = operation(request.operation)
    values = _set_values(request, op)
    if op.name == "upscale":
        inner = {_UPSCALE_NAMES[name]: value for name, value in values.items()}
        return {"image_request": inner}
    route = capability(V3_MODEL).route
    fields: dict[str, Any] = {}
    for name, value in values.items():
        rule = route.rule(name)
        wire = value if rule is None else rule.to_wire(value)
        if wire is not None:
            fields[name if rule is None else rule.wire_name] = wire
    return fields


def operation_parts(
    request: GenerationRequest,
    read_source: Callable[[str], bytes] | None,
    *,
    asynchronous: bool | None = None,
) -> list[Part]:
    """The multipart parts of ``request``: its fields, v2's ``async`` when given, and the
    source image read by storage key (named by its hash, so equal bytes, equal bodies)."""
    source = request.source
    if source is None or read_source is None:
        raise ValueError(f"row {request.row}: {request.operation} without a resolved image")
    fields = operation_fields(request)
    if asynchronous is not None:
        fields["async"] = asynchronous
    parts = form_parts(fields, request, None)
    image_part = operation(request.operation).image_part
    parts.append((image_part, (source.filename, read_source(source.key), source.media_type)))
    return parts


def _set_values(request: GenerationRequest, op: Operation) -> dict[str, Any]:
    """The request's set attributes that go into the body, in a stable order."""
    parameters = request.parameters()
    values: dict[str, Any] = {}
    if op.prompt != "none" and request.prompt:
        values["prompt"] = request.prompt
    for name, value in parameters.items():
        if name in ("prompt", "model", "operation", "source") or value is None:
            continue
        if name == "num_images" and value == 1:
            continue  # the endpoints' default; omitted so one-image operations match
        if name not in op.fields:
            raise ValueError(f"row {request.row}: {op.name} does not take {name}")
        values[name] = value
    return values

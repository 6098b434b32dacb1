"""Turning a validated :class:`GenerationRequest` into the exact body each endpoint takes.

Canonical forms live in the records (``16x9``, ``1024x1024``); endpoint spellings
(``ASPECT_16_9``, ``RESOLUTION_1024_1024``, ``magic_prompt_option``) exist only here. The
functions are public so a test can validate every body against Ideogram's published schemas.
"""

from __future__ import annotations

from typing import Any

from ideogram_pipeline.ideogram.records import GenerationRequest

__all__ = [
    "LEGACY_PATH",
    "V2_MODEL_PATHS",
    "V3_PATH",
    "legacy_body",
    "v2_body",
    "v2_path",
    "v3_fields",
]

V3_PATH = "/v1/ideogram-v3/generate"
LEGACY_PATH = "/generate"
V2_GENERATIONS_PATH = "/v2/generations"

#: Our model names -> the v2 model path. V_3 rows go to ``ideogram-3`` on the v2 API.
V2_MODEL_PATHS = {
    "V_3": "ideogram-3",
    "ideogram-3": "ideogram-3",
    "ideogram-4": "ideogram-4",
    "ideogram-4-5": "ideogram-4-5",
}
_V45_QUALITY = {"TURBO": "low", "QUALITY": "high"}


def v2_path(request: GenerationRequest) -> str:
    return f"/v2/image/generate/{V2_MODEL_PATHS[request.model]}"


def v2_body(request: GenerationRequest, *, asynchronous: bool = True) -> dict[str, Any]:
    """The JSON body of ``POST /v2/image/generate/{model}``: lowercase enums, ``async``."""
    model = V2_MODEL_PATHS[request.model]
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "num_images": request.num_images,
        "seed": request.seed,
        "magic_prompt": request.magic_prompt.lower() if request.magic_prompt else None,
        "async": asynchronous,
    }
    if model == "ideogram-4-5":
        body["quality"] = _V45_QUALITY.get(request.rendering_speed or "")
    else:
        body["rendering_speed"] = (request.rendering_speed or "").lower() or None
        body["resolution"] = request.resolution
    if model == "ideogram-3":
        body["aspect_ratio"] = request.aspect_ratio
        body["style_type"] = request.style_type.lower() if request.style_type else None
        body["negative_prompt"] = request.negative_prompt
    return {key: value for key, value in body.items() if value is not None}


def v3_fields(request: GenerationRequest) -> dict[str, Any]:
    """Fields of ``GenerateImageRequestV3``; unset values are omitted, not sent empty."""
    fields: dict[str, Any] = {
        "prompt": request.prompt,
        "num_images": request.num_images,
        "seed": request.seed,
        "aspect_ratio": request.aspect_ratio,
        "resolution": request.resolution,
        "rendering_speed": request.rendering_speed,
        "magic_prompt": request.magic_prompt,
        "style_type": request.style_type,
        "negative_prompt": request.negative_prompt,
    }
    return {key: value for key, value in fields.items() if value is not None}


def v3_multipart(request: GenerationRequest) -> list[tuple[str, tuple[None, str]]]:
    """The v3 fields as multipart/form-data parts (the endpoint's documented encoding)."""
    return [(key, (None, str(value))) for key, value in v3_fields(request).items()]


def legacy_body(request: GenerationRequest) -> dict[str, Any]:
    """``GenerateImageRequest`` for ``POST /generate``: ``{"image_request": {...}}``."""
    image_request: dict[str, Any] = {
        "prompt": request.prompt,
        "model": request.model,
        "num_images": request.num_images,
        "seed": request.seed,
        "magic_prompt_option": request.magic_prompt,
        "style_type": request.style_type,
        "negative_prompt": request.negative_prompt,
    }
    if request.aspect_ratio:
        width, height = request.aspect_ratio.split("x")
        image_request["aspect_ratio"] = f"ASPECT_{width}_{height}"
    if request.resolution:
        width, height = request.resolution.split("x")
        image_request["resolution"] = f"RESOLUTION_{width}_{height}"
    return {"image_request": {k: v for k, v in image_request.items() if v is not None}}

"""Published per-image prices, so every record carries what it cost.

Ideogram bills per output image, unsafe ones included; 422 and 429 are not billed.
Issue 18's controls change the product billed (v2 notes §6): a transparent background is
``ideogram-3-transparent``, a character reference ``ideogram-3-character``, and 4.5 bills by
its ``quality`` tier. :func:`request_price` prices a whole request with them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ideogram_pipeline.ideogram.operations import operation

if TYPE_CHECKING:
    from ideogram_pipeline.ideogram.generation import GenerationRequest

__all__ = [
    "CHARACTER_PRICE_BY_SPEED_USD",
    "PRICE_PER_IMAGE_USD",
    "TRANSPARENT_PRICE_USD",
    "has_priced_controls",
    "operation_price",
    "price_per_image",
    "quote_key",
    "request_price",
]

#: USD per image for the legacy models.
PRICE_PER_IMAGE_USD: dict[str, float] = {
    "V_2": 0.08,
    "V_2_TURBO": 0.05,
    "V_2A": 0.04,
    "V_2A_TURBO": 0.025,
    "V_1": 0.06,
    "V_1_TURBO": 0.02,
}

#: USD per image for Ideogram 3.0, by rendering speed (DEFAULT when unset).
V3_PRICE_BY_SPEED_USD: dict[str, float] = {
    "FLASH": 0.03,
    "TURBO": 0.03,
    "BALANCED": 0.06,
    "DEFAULT": 0.06,
    "QUALITY": 0.09,
}


#: USD per image on the v2 API (``/v2/image/generate/{model}``), by speed or quality knob.
V2_PRICE_USD: dict[str, dict[str, float]] = {
    "ideogram-3": V3_PRICE_BY_SPEED_USD,
    "ideogram-4": {"TURBO": 0.03, "DEFAULT": 0.06, "QUALITY": 0.10},
    # 4.5 bills by quality (low/medium/high); its rendering_speed column maps onto it, and
    # its quality column names the tier itself.
    "ideogram-4-5": {
        "TURBO": 0.03,
        "DEFAULT": 0.10,
        "QUALITY": 0.10,
        "LOW": 0.03,
        "MEDIUM": 0.06,
        "HIGH": 0.10,
    },
    # V_2 and V_2A on the v2 API: the legacy models' prices (v2 notes §5 prices: SPEC3P).
    "ideogram-2": {"DEFAULT": 0.08},
    "ideogram-2a": {"DEFAULT": 0.04},
}


#: USD per image with a character reference, by speed (v2 notes §6: ideogram-3-character).
CHARACTER_PRICE_BY_SPEED_USD: dict[str, float] = {
    "FLASH": 0.10,
    "TURBO": 0.10,
    "BALANCED": 0.15,
    "DEFAULT": 0.15,
    "QUALITY": 0.20,
}
#: USD per transparent-background image, by product (v2 notes §6: SPEC3P's flat prices).
TRANSPARENT_PRICE_USD: dict[str, float] = {
    "ideogram-3-transparent": 0.07,
    "ideogram-4-transparent": 0.06,
}


V2_PRICE_USD["ideogram-3-character"] = CHARACTER_PRICE_BY_SPEED_USD


def price_per_image(model: str, rendering_speed: str | None = None) -> float:
    """Price of one image; BALANCED is unpublished and billed here like DEFAULT.

    ``model`` may also be a product the simulator bills (``ideogram-3-transparent``)."""
    speed = (rendering_speed or "DEFAULT").upper()
    if model in TRANSPARENT_PRICE_USD:
        return TRANSPARENT_PRICE_USD[model]
    if model == "V_3":
        return V3_PRICE_BY_SPEED_USD[speed]
    if model in V2_PRICE_USD:
        return V2_PRICE_USD[model].get(speed, V2_PRICE_USD[model]["DEFAULT"])
    return PRICE_PER_IMAGE_USD[model]


def operation_price(name: str, rendering_speed: str | None = None) -> float:
    """Price of one image of operation ``name``: upscale, describe and remove-background
    bill a flat fee; remix, reframe and replace-background as a 3.0 image of their speed."""
    flat = operation(name).flat_price_usd
    speed = (rendering_speed or "DEFAULT").upper()
    return flat if flat is not None else V3_PRICE_BY_SPEED_USD[speed]


def has_priced_controls(request: GenerationRequest) -> bool:
    """Whether a control changes the product billed beyond what :func:`quote_key` names
    (transparency, a character reference), so a quote of that key misprices it."""
    return bool(request.transparent or _has_character(request))


def quote_key(request: GenerationRequest) -> tuple[str, str | None]:
    """What a v2 ``dry_run`` quote depends on: the model and its speed or 4.5 quality tier
    (an operation: its name; flat-priced, its options do not change the fee)."""
    if request.is_operation:
        return request.operation, None
    return request.model, request.quality or request.rendering_speed


def request_price(request: GenerationRequest) -> float:
    """Price of one image of ``request``, its controls included.

    A ``KeyError`` for a model without a published price, as :func:`price_per_image`.
    """
    speed = (request.rendering_speed or "DEFAULT").upper()
    if request.is_operation:
        return operation_price(request.operation, speed)
    if request.transparent:
        return TRANSPARENT_PRICE_USD["ideogram-3-transparent"]
    if _has_character(request):
        return CHARACTER_PRICE_BY_SPEED_USD.get(speed, CHARACTER_PRICE_BY_SPEED_USD["DEFAULT"])
    return price_per_image(request.model, request.quality or request.rendering_speed)


def _has_character(request: GenerationRequest) -> bool:
    """Resolved or not yet (an estimate reads the batch before its references are stored)."""
    roles: list[str] = [image.role for image in request.references or ()]
    roles += [role for role, _text in request.reference_sources]
    return "character" in roles

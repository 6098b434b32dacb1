"""Published per-image prices, so every record carries what it cost.

Ideogram bills per output image, unsafe ones included; 422 and 429 are not billed.
"""

from __future__ import annotations

__all__ = ["PRICE_PER_IMAGE_USD", "price_per_image"]

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
    # 4.5 bills by quality (low/medium/high); its rendering_speed column maps onto it.
    "ideogram-4-5": {"TURBO": 0.03, "DEFAULT": 0.10, "QUALITY": 0.10},
    # V_2 and V_2A on the v2 API: the legacy models' prices (v2 notes §5 prices: SPEC3P).
    "ideogram-2": {"DEFAULT": 0.08},
    "ideogram-2a": {"DEFAULT": 0.04},
}


def price_per_image(model: str, rendering_speed: str | None = None) -> float:
    """Price of one image; BALANCED is unpublished and billed here like DEFAULT."""
    speed = (rendering_speed or "DEFAULT").upper()
    if model == "V_3":
        return V3_PRICE_BY_SPEED_USD[speed]
    if model in V2_PRICE_USD:
        return V2_PRICE_USD[model].get(speed, V2_PRICE_USD[model]["DEFAULT"])
    return PRICE_PER_IMAGE_USD[model]

"""The structured generation controls: their canonical form in a request and on the wire.

Why a module: a colour palette, a list of style codes and 4.5's ``size`` are not one enum
value, so the capability table's choice rules cannot spell them. A request carries each in
one canonical, hashable form (what records store and request hashes cover); this module
turns that form into the endpoint's JSON (``{"members": [{"color_hex": ...}]}``), and checks
a received wire value, for the simulator, by the spec's own rules.

Canonical forms:

- ``style_codes``: a tuple of upper-case 8-digit hex codes (``GenerateImageRequestV3``
  ``StyleCode``).
- ``color_palette``: a preset name (``EMBER``) or members ``#RRGGBB[:weight]`` joined by
  ``|`` (``ColorPaletteWithMembers``: 1-8 members, weights 0.05-1.0).
- ``size`` (ideogram-4-5): ``auto`` or ``WxH`` within the v2 notes' limits (multiples of 32,
  at least 256 px a side, at most 2048x2048 pixels, ratio at most 6:1).
"""

from __future__ import annotations

import re
from typing import Any

from ideogram_pipeline.ideogram import spec

__all__ = [
    "PALETTE_MAX_MEMBERS",
    "PALETTE_PRESETS",
    "SIZE_MAX_PIXELS",
    "STYLE_CODE_RE",
    "palette_error",
    "palette_to_wire",
    "size_error",
    "structured_to_wire",
    "structured_wire_error",
]

STYLE_CODE_RE = re.compile(spec.schema_document()["$defs"]["StyleCode"]["pattern"])
PALETTE_PRESETS: tuple[str, ...] = spec.enum_values("ColorPalettePresetName")
_MEMBERS = spec.property_schema("ColorPaletteWithMembers", "members")
PALETTE_MAX_MEMBERS = int(_MEMBERS["maxItems"])
_WEIGHT = spec.property_schema("ColorPaletteMember", "color_weight")
WEIGHT_MIN, WEIGHT_MAX = float(_WEIGHT["minimum"]), float(_WEIGHT["maximum"])
_HEX_RE = re.compile(spec.property_schema("ColorPaletteMember", "color_hex")["pattern"])

#: 4.5 ``size`` limits (v2 notes §1 "4.5 details").
SIZE_STEP = 32
SIZE_MIN_SIDE = 256
SIZE_MAX_PIXELS = 2048 * 2048
SIZE_MAX_RATIO = 6
_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")


def palette_error(canonical: str) -> str | None:
    """Why a canonical palette is not one the spec allows; ``None`` when it is fine."""
    if canonical in PALETTE_PRESETS:
        return None
    members = canonical.split("|")
    if not 1 <= len(members) <= PALETTE_MAX_MEMBERS:
        return f"has {len(members)} colours; a palette has 1 to {PALETTE_MAX_MEMBERS}"
    for member in members:
        colour, _, weight = member.partition(":")
        if not _HEX_RE.fullmatch(colour):
            return f"{colour!r} is not a colour #RRGGBB"
        if weight:
            try:
                value = float(weight)
            except ValueError:
                return f"weight {weight!r} of {colour} is not a number"
            if not WEIGHT_MIN <= value <= WEIGHT_MAX:
                return f"weight {weight} of {colour} is outside {WEIGHT_MIN}-{WEIGHT_MAX}"
    return None


def palette_to_wire(canonical: str) -> dict[str, Any]:
    """``ColorPaletteWithPresetNameOrMembers`` JSON for a canonical palette."""
    if canonical in PALETTE_PRESETS:
        return {"name": canonical}
    members: list[dict[str, Any]] = []
    for member in canonical.split("|"):
        colour, _, weight = member.partition(":")
        item: dict[str, Any] = {"color_hex": colour}
        if weight:
            item["color_weight"] = float(weight)
        members.append(item)
    return {"members": members}


def size_error(size: str) -> str | None:
    """Why a 4.5 ``size`` is refused; ``None`` when it is ``auto`` or a valid ``WxH``."""
    if size == "auto":
        return None
    match = _SIZE_RE.fullmatch(size)
    if match is None:
        return "is not auto or WIDTHxHEIGHT"
    width, height = int(match.group(1)), int(match.group(2))
    if width % SIZE_STEP or height % SIZE_STEP:
        return f"sides must be multiples of {SIZE_STEP}"
    if min(width, height) < SIZE_MIN_SIDE:
        return f"sides must be at least {SIZE_MIN_SIDE} px"
    if width * height > SIZE_MAX_PIXELS:
        return f"is {width * height:,} pixels; at most {SIZE_MAX_PIXELS:,} (2048x2048)"
    if max(width, height) > SIZE_MAX_RATIO * min(width, height):
        return f"ratio is over {SIZE_MAX_RATIO}:1"
    return None


def structured_to_wire(name: str, value: Any) -> Any:
    """A structured field's canonical value as the endpoint's JSON."""
    if name == "color_palette":
        return palette_to_wire(str(value))
    if name == "style_codes":
        return list(value)
    return value


def structured_wire_error(name: str, value: Any) -> str | None:
    """Why a structured field's wire value is refused (the simulator's v2 check)."""
    if name == "style_codes":
        if not isinstance(value, list) or not value:
            return "must be a non-empty list of style codes"
        bad = [code for code in value if not isinstance(code, str) or not STYLE_CODE_RE.match(code)]
        return f"{bad[0]!r} is not an 8-digit hex style code" if bad else None
    if name == "color_palette":
        return _wire_palette_error(value)
    if name == "size":
        return size_error(value) if isinstance(value, str) else "must be a string"
    return None


def _wire_palette_error(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be an object with a preset name or members"
    if "name" in value:
        return None if value["name"] in PALETTE_PRESETS else f"{value['name']!r} is no preset"
    members = value.get("members")
    if not isinstance(members, list):
        return "must have a preset name or members"
    parts = []
    for member in members:
        if not isinstance(member, dict) or not isinstance(member.get("color_hex"), str):
            return "each member needs a color_hex"
        weight = member.get("color_weight")
        parts.append(member["color_hex"] + ("" if weight is None else f":{weight}"))
    return palette_error("|".join(parts)) if parts else "needs at least one member"

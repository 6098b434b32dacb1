"""Batch cells for Ideogram's consistency controls (issue 18): style presets and codes, colour
palettes, transparency, and ideogram-4-5's quality, size and copyright detection.

Kept apart from :mod:`ideogram_pipeline.batches.fields` because these cells are lists and
small structures rather than one enum value; the rules still come from the capability table
(which model takes which field) and :mod:`ideogram_pipeline.ideogram.controls` (the spec's
patterns, palette presets and limits), so a message names exactly what the spec allows.

Each parser returns the canonical value a request carries, ``None`` for an empty cell, or
raises :class:`~ideogram_pipeline.batches.fields.CellRejected` naming the column.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ideogram_pipeline.batches.fields import CellRejected, rule_for, show
from ideogram_pipeline.ideogram import controls, references
from ideogram_pipeline.ideogram.capabilities import MODELS, capability, models_taking

__all__ = [
    "parse_color_palette",
    "parse_controls",
    "parse_flag",
    "parse_quality",
    "parse_size",
    "parse_style_codes",
    "parse_style_preset",
]

_TRUE = ("TRUE", "YES", "ON", "1")
_FALSE = ("FALSE", "NO", "OFF", "0")
#: Models with a transparent-background endpoint (the capability table's transparent routes).
TRANSPARENT_MODELS = tuple(
    model for model in MODELS if capability(model).transparent_route is not None
)


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split("|") if part.strip()]


def parse_style_codes(raw: str, model: str) -> tuple[str, ...] | None:
    """``AAFF5733|0133FF57``: 8-digit hex codes (``#`` and spaces are forgiven)."""
    if not raw:
        return None
    rule_for("style_codes", model)
    parts = _split(raw)
    codes = [part.lstrip("#").upper() for part in parts]
    bad = [part for part, code in zip(parts, codes, strict=True) if not _is_code(code)]
    if bad or not codes:
        raise CellRejected(
            "style_codes",
            f"{show(bad[0] if bad else raw)} is not a style code: 8 hexadecimal digits such "
            "as AAFF5733, several separated by |",
        )
    return tuple(dict.fromkeys(codes))


def _is_code(code: str) -> bool:
    return controls.STYLE_CODE_RE.match(code) is not None


def parse_style_preset(raw: str, model: str) -> str | None:
    """A ``StylePresetV3`` name; ``Art Deco`` and ``art-deco`` read as ``ART_DECO``."""
    if not raw:
        return None
    rule = rule_for("style_preset", model)
    value = re.sub(r"[\s-]+", "_", raw.strip().upper())
    if value not in rule.values:
        shown = ", ".join(rule.values)
        raise CellRejected("style_preset", f"{show(raw)} is not a style preset ({shown})")
    return value


def parse_color_palette(raw: str, model: str) -> str | None:
    """A preset name (``ember``) or ``#RRGGBB[:weight]`` members separated by ``|``."""
    if not raw:
        return None
    rule_for("color_palette", model)
    if raw.strip().upper() in controls.PALETTE_PRESETS:
        return raw.strip().upper()
    members = []
    for part in _split(raw):
        colour, _, weight = part.partition(":")
        colour = colour.strip().upper()
        colour = colour if colour.startswith("#") else f"#{colour}"
        members.append(f"{colour}:{weight.strip()}" if weight.strip() else colour)
    canonical = "|".join(members)
    problem = controls.palette_error(canonical) if members else "is empty"
    if problem is not None:
        raise CellRejected(
            "color_palette",
            f"{show(raw)}: {problem}. Allowed: a preset ({', '.join(controls.PALETTE_PRESETS)}) "
            f"or up to {controls.PALETTE_MAX_MEMBERS} colours #RRGGBB[:weight] separated by |, "
            f"weights {controls.WEIGHT_MIN}-{controls.WEIGHT_MAX}",
        )
    return canonical


def parse_flag(column: str, raw: str) -> bool | None:
    """true/false (yes/no, on/off, 1/0); ``None`` for an empty cell."""
    if not raw:
        return None
    value = raw.strip().upper()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise CellRejected(column, f"{show(raw)} is not true or false (yes/no and 1/0 work too)")


def parse_quality(raw: str, model: str) -> str | None:
    if not raw:
        return None
    rule = rule_for("quality", model)
    value = raw.strip().upper()
    if value not in rule.values:
        allowed = ", ".join(v.lower() for v in rule.values)
        raise CellRejected("quality", f"{show(raw)} is not one of {allowed} (quality of {model})")
    return value


def parse_size(raw: str, model: str) -> str | None:
    """``auto`` or ``WIDTHxHEIGHT`` (``1024*768`` and ``1024 x 768`` too)."""
    if not raw:
        return None
    rule_for("size", model)
    value = re.sub(r"\s*[x×*X]\s*", "x", raw.strip()).lower()
    problem = controls.size_error(value)
    if problem is not None:
        raise CellRejected(
            "size",
            f"{show(raw)} {problem} (allowed: auto, or WIDTHxHEIGHT in multiples of "
            f"{controls.SIZE_STEP}, each side at least {controls.SIZE_MIN_SIDE}, at most "
            f"2048x2048 pixels in all, ratio at most {controls.SIZE_MAX_RATIO}:1)",
        )
    return value


def parse_controls(
    cell: Callable[[str], str],
    model: str,
    *,
    style_type: str | None,
    rendering_speed: str | None,
    resolution: str | None,
) -> dict[str, Any]:
    """Every control cell of a row as ``GenerationRequest`` keyword arguments.

    ``style_type``, ``rendering_speed`` and ``resolution`` are the row's already parsed
    values, for the rules that tie them to a control.
    """
    codes = parse_style_codes(cell("style_codes"), model)
    if codes and style_type:
        # The spec: "Cannot be used in conjunction with style_reference_images or style_type".
        raise CellRejected("style_codes", "style_codes cannot be used together with style_type")
    quality = parse_quality(cell("quality"), model)
    if quality and rendering_speed:
        raise CellRejected(
            "quality", f"quality and rendering_speed both set {model}'s quality; keep one"
        )
    sources = parse_reference_sources(cell, model)
    if codes and any(role == "style" for role, _text in sources):
        # The spec: style_codes "cannot be used in conjunction with style_reference_images".
        raise CellRejected(
            "style_reference_images",
            "style_codes and style_reference_images cannot be used together",
        )
    transparent = parse_flag("transparent", cell("transparent")) or None
    values: dict[str, Any] = {
        "style_preset": parse_style_preset(cell("style_preset"), model),
        "style_codes": codes,
        "color_palette": parse_color_palette(cell("color_palette"), model),
        "transparent": transparent,
        "quality": quality,
        "size": parse_size(cell("size"), model),
        "enable_copyright_detection": _copyright(cell("enable_copyright_detection"), model),
    }
    if transparent:
        named = {references.WIRE_NAMES[role]: text for role, text in sources}
        _check_transparent(
            model, {"style_type": style_type, "resolution": resolution, **values, **named}
        )
    if sources:
        values["reference_sources"] = sources
    return values


def parse_reference_sources(cell: Callable[[str], str], model: str) -> tuple[tuple[str, str], ...]:
    """The reference columns as ``(role, text)`` pairs, in column order; the counts the
    spec fixes are checked here, the files themselves when the batch runs
    (:mod:`ideogram_pipeline.batches.references`)."""
    found: dict[references.Role, list[str]] = {}
    for role in references.ROLES:
        column = references.COLUMNS[role]
        parts = _split(cell(column))
        if parts:
            rule_for(references.WIRE_NAMES[role], model, column)
            found[role] = parts
    characters, masks = found.get("character", []), found.get("character_mask", [])
    if len(characters) > references.MAX_CHARACTER_IMAGES:
        raise CellRejected(
            "character_reference_images",
            f"names {len(characters)} images; Ideogram takes "
            f"{references.MAX_CHARACTER_IMAGES} character reference today",
        )
    if masks and len(masks) != len(characters):
        raise CellRejected(
            "character_reference_mask",
            f"names {len(masks)} mask(s) for {len(characters)} character reference image(s); "
            "give one mask per character image",
        )
    return tuple((role, text) for role in references.ROLES for text in found.get(role, []))


def _copyright(raw: str, model: str) -> bool | None:
    flag = parse_flag("enable_copyright_detection", raw)
    if flag is not None:
        rule_for("enable_copyright_detection", model)
    return flag


def _check_transparent(model: str, values: dict[str, Any]) -> None:
    """Transparent rows go to ``generate-transparent``, which takes fewer fields."""
    route = capability(model).transparent_route
    if route is None:
        having = ", ".join(m for m in TRANSPARENT_MODELS)
        raise CellRejected(
            "transparent", f"{model} has no transparent background (only {having} has)"
        )
    for name, value in values.items():
        if value is not None and name != "transparent" and route.rule(name) is None:
            where = ", ".join(models_taking(name)) or "no model"
            raise CellRejected(
                name,
                f"cannot be used with transparent=true: a transparent {model} image takes "
                f"no {name} ({where} without transparency do)",
            )

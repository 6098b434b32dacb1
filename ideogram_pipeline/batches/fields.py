"""Reading one CSV cell into a canonical request value, by the capability table's rules.

Each parser accepts the spellings people write (``16:9``, ``ASPECT_16_9``, ``on``/``yes``,
``2a turbo``, ``4.5``) and returns the canonical form records carry. What a model takes,
which values are allowed and the numeric bounds are never written here: they are asked of
:mod:`ideogram_pipeline.ideogram.capabilities`, so CSV validation cannot drift from the
requests the client builds or from what the simulator accepts.

A bad cell raises :class:`CellRejected` naming the column and the allowed values; the row
reader turns it into a ``rejected`` row.
"""

from __future__ import annotations

import re

from ideogram_pipeline.ideogram.capabilities import (
    MODELS,
    V3_MODEL,
    FieldRule,
    capability,
    models_taking,
)

__all__ = [
    "CellRejected",
    "check_length",
    "check_text",
    "parse_aspect_ratio",
    "parse_int",
    "parse_magic_prompt",
    "parse_model",
    "parse_rendering_speed",
    "parse_resolution",
    "parse_style_type",
    "parse_ui_rendering",
    "rule_for",
    "show",
]

#: v2 API model paths and version numbers as people write them.
_V2_MODEL_NAMES = {
    "ideogram-3": V3_MODEL,
    "ideogram-4": "ideogram-4",
    "4.0": "ideogram-4",
    "4": "ideogram-4",
    "ideogram-4-5": "ideogram-4-5",
    "4.5": "ideogram-4-5",
}
#: People's words for the Magic Prompt settings (the spec's AUTO/ON/OFF map to themselves).
_MAGIC_PROMPT_WORDS = {
    **dict.fromkeys(("TRUE", "YES"), "ON"),
    **dict.fromkeys(("FALSE", "NO"), "OFF"),
}
#: What a message calls each field's values ("the style types of V_3").
_NOUNS = {
    "style_type": "style types",
    "aspect_ratio": "aspect ratios",
    "resolution": "resolutions",
    "rendering_speed": "rendering speeds",
}
#: How a message says that a model lacks a field; ``{models}`` lists the models that take it.
_NOT_TAKEN = {
    "negative_prompt": "{model} does not support a negative prompt (only {models} do)",
    "style_type": "{model} does not take a style type ({models} do)",
    "resolution": "{model} does not take a resolution (only {models} do); use aspect_ratio",
    "aspect_ratio": "{model} takes no aspect_ratio; use resolution",
    "rendering_speed": "is only for {models}; {model} has no rendering speed "
    "(use model {turbo} for speed)",
}

_MODEL_RE = re.compile(r"(?:IDEOGRAM)?V?(3|2A|2|1)(?:\.0)?(TURBO)?")
_RATIO_RE = re.compile(r"(?:ASPECT_?)?(\d{1,5})\s*[X:_/×]\s*(\d{1,5})", re.ASCII)
_RESOLUTION_RE = re.compile(r"(?:RESOLUTION_?)?(\d{1,5})\s*[X_*×]\s*(\d{1,5})", re.ASCII)
_INT_RE = re.compile(r"[+-]?(\d+)(?:\.0*)?", re.ASCII)


class CellRejected(Exception):
    """The first problem found in a row: the column to name and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


def show(value: str) -> str:
    """A cell value quoted for a message, shortened so one bad cell cannot flood a log."""
    if len(value) <= 60:
        return repr(value)
    return f"{value[:57]!r}... ({len(value):,} characters)"


def _not_one_of(value: str, allowed: tuple[str, ...] | list[str], note: str = "") -> str:
    return f"{show(value)} is not one of {', '.join(allowed)}{note}"


def _turbo(model: str) -> str:
    return model if model.endswith("_TURBO") else f"{model}_TURBO"


def rule_for(field: str, model: str, column: str | None = None) -> FieldRule:
    """The model's rule for ``field``; rejects the cell (named ``column``) if it has none."""
    rule = capability(model).rule(field)
    if rule is None:
        template = _NOT_TAKEN.get(field, "{model} does not take " + field + " (only {models} do)")
        message = template.format(
            model=model, models=", ".join(models_taking(field)), turbo=_turbo(model)
        )
        raise CellRejected(column or field, message)
    return rule


def _choose(field: str, column: str, raw: str, value: str, model: str) -> str:
    """``value`` if the model's rule allows it; otherwise a rejection listing the allowed
    values and, when other models take the value, which ones."""
    rule = rule_for(field, model, column)
    if value in rule.values:
        return value
    note = f" (the {_NOUNS.get(field, field)} of {model})"
    elsewhere = models_taking(field, value) if value else ()
    if elsewhere:
        note += f"; {value} is only for {', '.join(elsewhere)}"
    raise CellRejected(column, _not_one_of(raw, rule.values, note))


def check_text(field: str, value: str, *, required: bool) -> None:
    if required and not value:
        raise CellRejected(field, "is empty")
    position = value.find("\x00")
    if position >= 0:
        raise CellRejected(
            field, f"contains a NUL character (\\x00) at position {position + 1}; remove it"
        )


def check_length(field: str, value: str, model: str) -> None:
    limit = rule_for(field, model).maximum
    if limit is not None and len(value) > limit:
        raise CellRejected(field, f"is {len(value):,} characters long; the limit is {limit:,}")


def parse_model(raw: str) -> str:
    if not raw:
        return V3_MODEL
    if raw.lower() in _V2_MODEL_NAMES:
        return _V2_MODEL_NAMES[raw.lower()]
    match = _MODEL_RE.fullmatch(re.sub(r"[\s_-]", "", raw.upper()))
    if match is None:
        note = " (3.0, 2.0, 2a, 1.0 and turbo spellings such as 2a_turbo work too)"
        raise CellRejected("model", _not_one_of(raw, MODELS, note))
    version, turbo = match.groups()
    if version == "3":
        if turbo:
            raise CellRejected(
                "model", "V_3 has no TURBO model; set rendering_speed (UI: rendering) to TURBO"
            )
        return V3_MODEL
    return f"V_{version}_TURBO" if turbo else f"V_{version}"


def parse_rendering_speed(raw: str, model: str, column: str = "rendering_speed") -> str | None:
    if not raw:
        return None
    return _choose("rendering_speed", column, raw, raw.upper(), model)


def parse_ui_rendering(raw: str, model: str) -> tuple[str, str | None]:
    """Ideogram UI ``rendering``: a speed where the model takes one; for legacy models
    ``turbo`` picks the ``_TURBO`` model and default/quality keep the model as written."""
    value = raw.upper()
    ui_speeds = rule_for("rendering_speed", V3_MODEL).values
    if value not in ui_speeds:
        raise CellRejected("rendering", _not_one_of(raw, [s.lower() for s in ui_speeds]))
    if capability(model).takes("rendering_speed"):
        return model, parse_rendering_speed(raw, model, column="rendering")
    if value == "TURBO" and _turbo(model) in MODELS:
        return _turbo(model), None
    if value in ("DEFAULT", "QUALITY"):
        return model, None
    raise CellRejected(
        "rendering", f"{show(raw)} is only for 3.0; {model} takes default, quality or turbo"
    )


def parse_int(field: str, raw: str, model: str, column: str | None = None) -> int | None:
    """An integer within the model's bounds for ``field``; ``42.0`` is accepted because
    spreadsheets write it."""
    if not raw:
        return None
    rule = rule_for(field, model, column)
    column = column or field
    low = 0 if rule.minimum is None else rule.minimum
    high = rule.maximum
    shown_range = f"{low}..{'' if high is None else high}"
    match = _INT_RE.fullmatch(raw)
    if match is None:
        raise CellRejected(column, f"{show(raw)} is not an integer in {shown_range}")
    # Checking the length first keeps int() away from absurdly long digit strings.
    too_long = high is not None and len(match.group(1).lstrip("0")) > len(str(high))
    value = 0 if too_long else int(raw.split(".")[0])
    if too_long or value < low or (high is not None and value > high):
        raise CellRejected(column, f"{show(raw)} is outside {shown_range}")
    return value


def parse_magic_prompt(raw: str, model: str) -> str | None:
    if not raw:
        return None
    rule = rule_for("magic_prompt", model)
    value = _MAGIC_PROMPT_WORDS.get(raw.upper(), raw.upper())
    if value not in rule.values:
        note = " (on/off, true/false and yes/no work too)"
        raise CellRejected("magic_prompt", _not_one_of(raw, rule.values, note))
    return value


def parse_aspect_ratio(raw: str, model: str) -> str | None:
    """Accept ``16x9``, ``16:9`` and ``ASPECT_16_9``; return the canonical ``16x9``."""
    if not raw:
        return None
    rule_for("aspect_ratio", model)
    match = _RATIO_RE.fullmatch(raw.upper())
    value = f"{int(match.group(1))}x{int(match.group(2))}" if match else ""
    return _choose("aspect_ratio", "aspect_ratio", raw, value, model)


def parse_resolution(raw: str, model: str) -> str | None:
    """Accept ``1024x1024`` and ``RESOLUTION_1024_1024``; return the canonical form."""
    if not raw:
        return None
    rule_for("resolution", model)
    match = _RESOLUTION_RE.fullmatch(raw.upper())
    value = f"{int(match.group(1))}x{int(match.group(2))}" if match else ""
    return _choose("resolution", "resolution", raw, value, model)


def parse_style_type(raw: str, model: str) -> str | None:
    if not raw:
        return None
    value = re.sub(r"[\s-]+", "_", raw.upper())
    return _choose("style_type", "style_type", raw, value, model)

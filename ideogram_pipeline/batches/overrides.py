"""Run-level overrides: one launch changes the model, rendering speed or style of every row.

A person launching a batch from the Dagster launchpad (or the CLI) may want the whole file
rendered with another model or speed without editing the CSV. The override replaces those
fields of each parsed :class:`~ideogram_pipeline.ideogram.generation.GenerationRequest`, and
the result is checked again by
:func:`ideogram_pipeline.batches.rows.validate_cells`, the same rules a CSV row meets, so
a combination the API would refuse (a V_3 aspect ratio on V_2, a style type V_1 does not
take) becomes a ``rejected`` row naming the field, never a paid 400.

Two choices, both documented on the launchpad fields:

- Overriding the model to one without a rendering speed (a legacy model, whose speed is the
  model itself, e.g. ``V_2_TURBO``) drops a row's ``rendering_speed``. Asking for such a
  model *and* a rendering speed is a contradiction in the config itself and is refused
  before any row is looked at (:class:`OverrideError`).
- An overridden request hashes differently, so rows stored earlier with other settings are
  generated (and paid) again; the cost estimate counts them.

The enums here are plain Python ``Enum`` types so Dagster turns them into launchpad
drop-downs and rejects any other value, naming the field, before a run starts; their members
come from the capability table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.batches.rows import validate_cells
from ideogram_pipeline.ideogram.capabilities import (
    CAPABILITIES,
    MODELS,
    capability,
    models_taking,
)
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.ideogram.references import COLUMNS as REFERENCE_COLUMNS

__all__ = [
    "ModelChoice",
    "OverrideError",
    "RenderingSpeedChoice",
    "RunOverrides",
    "StyleTypeChoice",
    "apply_overrides",
]


def _values_of_any_model(field: str) -> tuple[str, ...]:
    """Every canonical value some model takes for ``field``, first-seen order."""
    values: dict[str, None] = {}
    for cap in CAPABILITIES.values():
        rule = cap.rule(field)
        values.update(dict.fromkeys(rule.values if rule is not None else ()))
    return tuple(values)


# The drop-down enums take their members from the capability table at import, which mypy
# cannot follow (it needs literal members); Dagster reads them at run time.
#: Model names a run may force (the same names the CSV ``model`` column accepts).
ModelChoice = enum.Enum("ModelChoice", {name: name for name in MODELS}, type=str)  # type: ignore[misc]
#: Ideogram 3.0 rendering speeds (a superset of the v2 models' speeds).
RenderingSpeedChoice = enum.Enum(  # type: ignore[misc]
    "RenderingSpeedChoice",
    {name: name for name in _values_of_any_model("rendering_speed")},
    type=str,
)
#: Style types of every model; which ones a row's model takes is checked per row.
StyleTypeChoice = enum.Enum(  # type: ignore[misc]
    "StyleTypeChoice", {name: name for name in _values_of_any_model("style_type")}, type=str
)

_OVERRIDE_NOTE = " (value set by the run's override)"


class OverrideError(ValueError):
    """The overrides contradict each other; the message names the fields."""


@dataclass(frozen=True)
class RunOverrides:
    """Fields forced on every row of one run; ``None`` keeps the CSV's value."""

    model: str | None = None
    rendering_speed: str | None = None
    style_type: str | None = None

    def __post_init__(self) -> None:
        if self.model is not None and self.model not in MODELS:
            raise OverrideError(f"model {self.model!r} is not one of {', '.join(MODELS)}")
        speed_models = models_taking("rendering_speed")
        if self.rendering_speed is not None and self.model not in (None, *speed_models):
            raise OverrideError(
                f"rendering_speed {self.rendering_speed} is only for "
                f"{', '.join(speed_models)}, but model is {self.model}; unset one of them"
            )

    @property
    def empty(self) -> bool:
        return self.model is None and self.rendering_speed is None and self.style_type is None

    def describe(self) -> str:
        """``model=V_2, style_type=DESIGN``, or ``none``: for logs and metadata."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("model", self.model),
                ("rendering_speed", self.rendering_speed),
                ("style_type", self.style_type),
            )
            if value is not None
        ]
        return ", ".join(parts) or "none"


def _cells(request: GenerationRequest) -> dict[str, str]:
    """The request written back as native CSV cells (canonical forms parse unchanged)."""
    values = {
        "prompt": request.prompt,
        "model": request.model,
        "negative_prompt": request.negative_prompt,
        "style_type": request.style_type,
        "aspect_ratio": request.aspect_ratio,
        "resolution": request.resolution,
        "rendering_speed": request.rendering_speed,
        "magic_prompt": request.magic_prompt,
        "seed": request.seed,
        "num_images": request.num_images,
        "style_preset": request.style_preset,
        "style_codes": "|".join(request.style_codes) if request.style_codes else None,
        "color_palette": request.color_palette,
        "transparent": request.transparent,
        "quality": request.quality,
        "size": request.size,
        "enable_copyright_detection": request.enable_copyright_detection,
    }
    for role, column in REFERENCE_COLUMNS.items():
        named = [text for source_role, text in request.reference_sources if source_role == role]
        values[column] = "|".join(named) or None
    return {name: "" if value is None else str(value) for name, value in values.items()}


def _override_row(
    request: GenerationRequest, overrides: RunOverrides
) -> GenerationRequest | RejectedRow:
    cells = _cells(request)
    if overrides.model is not None:
        cells["model"] = overrides.model
        if not capability(overrides.model).takes("rendering_speed"):
            cells["rendering_speed"] = ""
    if overrides.rendering_speed is not None:
        cells["rendering_speed"] = overrides.rendering_speed
    if overrides.style_type is not None:
        cells["style_type"] = overrides.style_type
    checked = validate_cells(request.row, cells, request.tags)
    if isinstance(checked, RejectedRow):
        overridden = {
            "model": overrides.model,
            "rendering_speed": overrides.rendering_speed,
            "style_type": overrides.style_type,
        }
        note = _OVERRIDE_NOTE if overridden.get(checked.field) is not None else ""
        if overrides.model is not None and not note:
            note = f" (model overridden to {overrides.model})"
        return replace(checked, reason=checked.reason + note)
    # Only the overridable fields come from the check, so anything else a request carries
    # (now or in a later version) is kept as parsed.
    return replace(
        request,
        model=checked.model,
        rendering_speed=checked.rendering_speed,
        style_type=checked.style_type,
    )


def apply_overrides(batch: Batch, overrides: RunOverrides) -> Batch:
    """``batch`` with ``overrides`` applied to every valid row; rejected rows stay as they are."""
    if overrides.empty:
        return batch
    rows = tuple(
        _override_row(row, overrides) if isinstance(row, GenerationRequest) else row
        for row in batch.rows
    )
    return replace(batch, rows=rows)

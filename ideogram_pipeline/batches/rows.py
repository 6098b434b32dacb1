"""One batch row -> a :class:`GenerationRequest`, or a :class:`RejectedRow` naming the field.

A bad row is data, not an exception: it is recorded as ``rejected`` and never paid for,
while its neighbours still run. The order of the checks is chosen for the most useful first
message: the prompt, then the model (every other rule depends on it), then each parameter.
The rules themselves live in :mod:`ideogram_pipeline.batches.fields` and, below it, the
capability table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ideogram_pipeline.batches import controls, fields
from ideogram_pipeline.batches.fields import CellRejected
from ideogram_pipeline.ideogram.capabilities import EXCLUSIVE_FIELDS
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow

__all__ = ["validate_cells", "validate_row"]

#: Reads a cell by (native or UI) column name; "" when the row has no such cell.
CellReader = Callable[[str], str]


def validate_row(
    number: int, prompt: str, tags: tuple[str, ...], cell: CellReader
) -> GenerationRequest | RejectedRow:
    """Validate one row whose cells ``cell`` reads (already trimmed)."""
    try:
        return _request(number, prompt, tags, cell)
    except CellRejected as problem:
        return RejectedRow(
            row=number,
            field=problem.field,
            reason=problem.reason,
            prompt=prompt.replace("\x00", "\ufffd"),  # NUL breaks some stores downstream
            tags=tags,
        )


def validate_cells(
    number: int, cells: Mapping[str, str], tags: tuple[str, ...] = ()
) -> GenerationRequest | RejectedRow:
    """Validate one row given as native column name -> cell text.

    For code that changes a request after parsing (run-level overrides in
    :mod:`ideogram_pipeline.batches.overrides`): the row is checked by the same rules as a
    CSV row, so every rule lives in one place.
    """
    prompt = cells.get("prompt", "").strip()
    return validate_row(number, prompt, tags, lambda name: cells.get(name, "").strip())


def _request(
    number: int, prompt: str, tags: tuple[str, ...], cell: CellReader
) -> GenerationRequest:
    fields.check_text("prompt", prompt, required=True)
    model = fields.parse_model(cell("model"))
    fields.check_length("prompt", prompt, model)
    if cell("rendering"):
        model, rendering_speed = fields.parse_ui_rendering(cell("rendering"), model)
    else:
        rendering_speed = fields.parse_rendering_speed(cell("rendering_speed"), model)
    seed_column = "seed_number" if cell("seed_number") else "seed"
    seed = fields.parse_int("seed", cell(seed_column), model, column=seed_column)
    num_images = fields.parse_int("num_images", cell("num_images"), model)
    magic_prompt = fields.parse_magic_prompt(cell("magic_prompt"), model)
    for first, second, _reason in EXCLUSIVE_FIELDS:
        if cell(first) and cell(second):
            raise CellRejected(second, f"{first} and {second} cannot be used together")
    aspect_ratio = fields.parse_aspect_ratio(cell("aspect_ratio"), model)
    resolution = fields.parse_resolution(cell("resolution"), model)
    style_type = fields.parse_style_type(cell("style_type"), model)
    negative_prompt = cell("negative_prompt")
    if negative_prompt:
        fields.rule_for("negative_prompt", model)
        fields.check_text("negative_prompt", negative_prompt, required=False)
    extra = controls.parse_controls(
        cell,
        model,
        style_type=style_type,
        rendering_speed=rendering_speed,
        resolution=resolution,
    )
    return GenerationRequest(
        row=number,
        prompt=prompt,
        model=model,
        num_images=1 if num_images is None else num_images,
        negative_prompt=negative_prompt or None,
        style_type=style_type,
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        rendering_speed=rendering_speed,
        magic_prompt=magic_prompt,
        seed=seed,
        tags=tags,
        **extra,
    )

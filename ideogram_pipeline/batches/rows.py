"""One batch row -> a :class:`GenerationRequest`, or a :class:`RejectedRow` naming the field.

A bad row is data, not an exception: it is recorded as ``rejected`` and never paid for,
while its neighbours still run. Every bad field of a row is reported in one message, in the
order of the checks: the prompt, then the model (every other rule depends on it), then each
parameter.
The rules themselves live in :mod:`ideogram_pipeline.batches.fields` and, below it, the
capability table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ideogram_pipeline.batches import controls, fields, operation_rows
from ideogram_pipeline.batches.fields import CellRejected
from ideogram_pipeline.ideogram.capabilities import EXCLUSIVE_FIELDS
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow

__all__ = ["validate_cells", "validate_row"]

T = TypeVar("T")

#: Reads a cell by (native or UI) column name; "" when the row has no such cell.
CellReader = Callable[[str], str]


def validate_row(
    number: int, prompt: str, tags: tuple[str, ...], cell: CellReader
) -> GenerationRequest | RejectedRow:
    """Validate one row whose cells ``cell`` reads (already trimmed).

    Every bad field of the row is reported at once (the first in :attr:`RejectedRow.field`,
    all of them in the error), so a person fixes the row in one edit, not one per run.
    """
    problems = _Problems()
    request = _request(number, prompt, tags, cell, problems)
    if request is not None and not problems.found:
        return request
    first, *others = problems.found
    reason = "; ".join([first.reason, *(f"field '{p.field}': {p.reason}" for p in others)])
    return RejectedRow(
        row=number,
        field=first.field,
        reason=reason,
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


class _Problems:
    """The bad fields of one row, each once, in the order they were checked."""

    def __init__(self) -> None:
        self.found: list[CellRejected] = []

    def check(self, parse: Callable[[], T], default: T) -> T:
        """``parse()``, or ``default`` with the problem noted when it refuses the cell."""
        try:
            return parse()
        except CellRejected as problem:
            self.add(problem)
            return default

    def add(self, problem: CellRejected) -> None:
        if all(seen.field != problem.field for seen in self.found):
            self.found.append(problem)


def _request(
    number: int, prompt: str, tags: tuple[str, ...], cell: CellReader, problems: _Problems
) -> GenerationRequest | None:
    """The request, or None when a field is bad (``problems`` then says which, all of them).

    Every field is checked even after a bad one. Most rules depend on the model, so when
    the model itself is bad only the checks that do not need it run (their messages would
    be guesses otherwise).
    """
    # Issue 19: an operation on a stored image reads the same cells as a 3.0 generation,
    # restricted to what its endpoint takes (operation_rows.py).
    op = problems.check(lambda: operation_rows.parse_operation(cell("operation")), None)
    # ``generate`` spelt out is a generation like an empty cell; an unknown name is not.
    unknown_operation = any(p.field == "operation" for p in problems.found)
    is_generation = op is None and not unknown_operation
    problems.check(lambda: fields.check_text("prompt", prompt, required=is_generation), None)
    if op is not None or is_generation:  # (an unknown operation: its own message only)
        for refused in operation_rows.refuse_cells(op, prompt, cell):
            problems.add(refused)
    model_cell = "" if op is not None else cell("model")  # refuse_cells checked it
    parsed: str | None = problems.check(lambda: fields.parse_model(model_cell), None)
    negative_prompt = cell("negative_prompt")
    if negative_prompt:
        problems.check(
            lambda: fields.check_text("negative_prompt", negative_prompt, required=False), None
        )
    for first, second, _reason in EXCLUSIVE_FIELDS:
        if cell(first) and cell(second):
            problems.found.append(
                CellRejected(second, f"{first} and {second} cannot be used together")
            )
    if parsed is None:
        return None
    model = parsed
    problems.check(lambda: fields.check_length("prompt", prompt, model), None)
    rendering_speed: str | None
    if cell("rendering"):
        unchanged: tuple[str, str | None] = (model, None)
        model, rendering_speed = problems.check(
            lambda: fields.parse_ui_rendering(cell("rendering"), model), unchanged
        )
    else:
        rendering_speed = problems.check(
            lambda: fields.parse_rendering_speed(cell("rendering_speed"), model), None
        )
    seed_column = "seed_number" if cell("seed_number") else "seed"
    seed = problems.check(
        lambda: fields.parse_int("seed", cell(seed_column), model, column=seed_column), None
    )
    num_images = problems.check(
        lambda: fields.parse_int("num_images", cell("num_images"), model), None
    )
    magic_prompt = problems.check(
        lambda: fields.parse_magic_prompt(cell("magic_prompt"), model), None
    )
    aspect_ratio = problems.check(
        lambda: fields.parse_aspect_ratio(cell("aspect_ratio"), model), None
    )
    resolution = problems.check(lambda: fields.parse_resolution(cell("resolution"), model), None)
    style_type = problems.check(lambda: fields.parse_style_type(cell("style_type"), model), None)
    if negative_prompt:
        problems.check(lambda: fields.rule_for("negative_prompt", model), None)
    no_controls: dict[str, Any] = {}
    extra = problems.check(
        lambda: controls.parse_controls(
            cell,
            model,
            style_type=style_type,
            rendering_speed=rendering_speed,
            resolution=resolution,
        ),
        no_controls,
    )
    operation_values = operation_rows.operation_cells(op, cell, problems.add)
    if problems.found:
        return None
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
        **operation_values,
    )

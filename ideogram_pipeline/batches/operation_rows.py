"""The cells of a row that works on a stored image (issue 19): ``operation``, ``image`` and the
operation's own settings, checked against what that operation's endpoint takes.

A row of an operation is otherwise read like a generation row of Ideogram 3.0 (the
operations' style controls are 3.0's), so every shared rule stays in ``rows.py`` and
``fields.py``; this module adds only what differs: which columns the operation takes, which
it needs, and whether it takes a prompt. Every problem is a :class:`CellRejected` naming the
column, so a bad row is ``rejected`` and never paid for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ideogram_pipeline.batches.fields import CellRejected, show
from ideogram_pipeline.ideogram.capabilities import V3_MODEL
from ideogram_pipeline.ideogram.generation import CONTROL_SETTINGS, OPERATION_SETTINGS
from ideogram_pipeline.ideogram.operations import GENERATE, OPERATIONS, Operation
from ideogram_pipeline.ideogram.references import COLUMNS as REFERENCE_COLUMNS

__all__ = ["OPERATION_COLUMNS", "operation_cells", "parse_operation", "refuse_cells"]

#: The batch columns issue 19 adds.
OPERATION_COLUMNS = ("operation", "image", *OPERATION_SETTINGS)

#: Generation columns, by the request attribute they set (the UI's synonyms included).
_SETTING_COLUMNS: dict[str, tuple[str, ...]] = {
    "negative_prompt": ("negative_prompt",),
    "style_type": ("style_type",),
    "aspect_ratio": ("aspect_ratio",),
    "resolution": ("resolution",),
    "rendering_speed": ("rendering_speed", "rendering"),
    "magic_prompt": ("magic_prompt",),
    "seed": ("seed", "seed_number"),
    "num_images": ("num_images",),
    **{name: (name,) for name in CONTROL_SETTINGS},
    **{name: (name,) for name in OPERATION_SETTINGS},
    "references": tuple(REFERENCE_COLUMNS.values()),
}
#: What each operation setting means, for messages.
_RANGES = {"image_weight": (1, 100), "resemblance": (1, 100), "detail": (1, 100)}

Cell = Callable[[str], str]


def parse_operation(raw: str) -> Operation | None:
    """The row's operation; None for ``generate`` (an empty cell is a generation)."""
    name = raw.strip().lower().replace("-", "_").replace(" ", "_")
    if not name or name == GENERATE:
        return None
    if name not in OPERATIONS:
        known = ", ".join([GENERATE, *OPERATIONS])
        raise CellRejected("operation", f"{show(raw)} is not one of {known}")
    return OPERATIONS[name]


def refuse_cells(op: Operation | None, prompt: str, cell: Cell) -> list[CellRejected]:
    """Every cell of the row that its operation does not take or misses, at once.

    A generation row may not name a source image or an operation's setting; an operation
    row may fill only its endpoint's columns (a dropped cell would pay for something else
    than was asked), must name its image, and must set what its endpoint requires.
    """
    problems: list[CellRejected] = []
    if op is None:
        for column in OPERATION_COLUMNS[1:]:
            if cell(column):
                problems.append(
                    CellRejected(
                        column,
                        "only an operation on a stored image takes it; "
                        "set the row's operation (e.g. upscale, remix)",
                    )
                )
        return problems
    if not cell("image"):
        problems.append(
            CellRejected(
                "image",
                f"is empty; {op.name} needs the image to work on: a record id (or a unique "
                "prefix), an s3:// URI inside the storage root, or a file path",
            )
        )
    if op.prompt == "required" and not prompt:
        problems.append(CellRejected("prompt", f"is empty; {op.name} needs a prompt"))
    if op.prompt == "none" and prompt:
        problems.append(CellRejected("prompt", f"{op.name} takes no prompt; leave it empty"))
    model = cell("model")
    if model and model.upper() not in (V3_MODEL, "3.0", "3"):
        problems.append(
            CellRejected("model", f"{op.name} runs on Ideogram's own model; leave model empty")
        )
    for setting, columns in _SETTING_COLUMNS.items():
        for column in columns:
            if cell(column) and setting not in op.fields:
                problems.append(CellRejected(column, f"{op.name} does not take {column}"))
    for setting in sorted(op.required):
        if not any(cell(column) for column in _SETTING_COLUMNS[setting]):
            problems.append(CellRejected(setting, f"is empty; {op.name} needs {setting}"))
    return problems


def operation_cells(
    op: Operation | None, cell: Cell, report: Callable[[CellRejected], None]
) -> dict[str, Any]:
    """The request's operation attributes: none for a generation; the operation, the image
    as named (resolved when the batch runs) and its own settings otherwise.

    Each bad setting goes to ``report`` and is left unset, so a row with a bad
    ``resemblance`` and a bad ``detail`` is told about both at once.
    """
    if op is None:
        return {}
    values: dict[str, Any] = {"operation": op.name, "source_text": cell("image")}
    for name in OPERATION_SETTINGS:
        if name in op.fields:
            try:
                values[name] = _percent(name, cell(name))
            except CellRejected as problem:
                report(problem)
    return values


def _percent(name: str, raw: str) -> int | None:
    if not raw:
        return None
    low, high = _RANGES[name]
    try:
        value = int(raw)
    except ValueError:
        raise CellRejected(name, f"{show(raw)} is not a whole number ({low}..{high})") from None
    if not low <= value <= high:
        raise CellRejected(name, f"{value} is outside {low}..{high}")
    return value

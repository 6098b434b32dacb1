"""A batch made from a selection of the history (``apply OPERATION --where SQL``, issue 19).

Why a batch file and not a special run: an operation over a selection then has every
guarantee a batch has (lease, ledger, ``unknown`` after a crash, resume, cost guard, the
Dagster partition and its checks) with nothing of its own to get wrong. The file is written
where the run can read it and lists one row per selected image, naming it by record id.

The batch key is derived from the operation, the selection's SQL and the options, so the
same command run twice is a re-run of one batch: images already done are skipped and
nothing is paid again; images that match the selection since are new rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ideogram_pipeline.ideogram.operations import operation
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = [
    "OperationSelection",
    "SelectedBatch",
    "option_problem",
    "select_images",
    "write_selection",
]


@dataclass(frozen=True)
class OperationSelection:
    """What ``apply`` was asked: an operation, the images (SQL over ``generations``), and
    the operation's settings as batch columns (``resemblance``, ``resolution``, ...)."""

    operation: str
    where: str
    prompt: str = ""
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The batch key: the operation and a hash of what selects and configures it.

        The settings are hashed as a row reads them (``turbo`` is ``TURBO``, ``16:9`` is
        ``16x9``), so the same request spelt two ways is one batch, not two that pay twice.
        """
        canonical = json.dumps(
            {
                "operation": self.operation,
                "where": " ".join(self.where.split()),
                "request": self._canonical_request(),
            },
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
        return f"{self.operation.replace('_', '-')}-{digest}"

    def _canonical_request(self) -> dict[str, object]:
        """What one row of the selection asks, in canonical forms (its image aside); the
        options as given when they are invalid (the batch then refuses them by name)."""
        from ideogram_pipeline.batches.rows import validate_cells
        from ideogram_pipeline.ideogram.generation import GenerationRequest

        cells = {"operation": self.operation, "image": "-", "prompt": self.prompt}
        row = validate_cells(1, {**cells, **self.settings})
        if not isinstance(row, GenerationRequest):
            return {"prompt": self.prompt, **dict(sorted(self.settings.items()))}
        return row.parameters()


@dataclass(frozen=True)
class SelectedBatch:
    """The batch file written for a selection."""

    key: str
    path: Path
    ids: tuple[str, ...]


def select_images(
    settings: Settings,
    where: str,
    store: ObjectStore | None = None,
    *,
    made_by: str | None = None,
) -> tuple[str, ...]:
    """Ids of the stored images ``where`` selects, oldest first.

    ``where`` is the user's SQL, run inside the query sandbox (read-only, limited) like
    ``query``; only records with an image object can be worked on. ``made_by`` (the
    selection's own batch key) leaves out the images that batch made: the same command run
    again must not select its own results (``--where true`` would upscale the upscales).
    """
    from ideogram_pipeline.history.sandbox import query_rows
    from ideogram_pipeline.safe_output import sql_literal

    own = f"AND batch <> {sql_literal(made_by)} " if made_by else ""
    sql = (
        "SELECT id FROM generations WHERE status = 'stored' AND image_key IS NOT NULL "
        f"{own}AND ({where}) ORDER BY created_at, id"
    )
    _columns, rows = query_rows(settings, sql, store)
    return tuple(str(row[0]) for row in rows)


def write_selection(
    selection: OperationSelection, ids: tuple[str, ...], folder: Path
) -> SelectedBatch:
    """Write the batch file of ``selection`` over ``ids`` into ``folder`` (one row per id)."""
    operation(selection.operation)  # a KeyError naming the operations otherwise
    columns = ["operation", "image", "prompt", *sorted(selection.settings)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for record_id in ids:
        values = [selection.settings[name] for name in sorted(selection.settings)]
        writer.writerow([selection.operation, record_id, selection.prompt, *values])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{selection.key}.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    return SelectedBatch(selection.key, path, ids)


def option_problem(selected: SelectedBatch) -> tuple[str, str] | None:
    """``(setting, reason)`` when the options make the selection's rows invalid.

    Every row carries the same options, so one they make invalid is refused before
    anything runs, in terms of the option rather than of a row (a source that cannot be
    used is a row's own problem, and stays a rejected row)."""
    from ideogram_pipeline.batches.files import load_batch
    from ideogram_pipeline.ideogram.generation import RejectedRow

    for row in load_batch(selected.path, key=selected.key).rows:
        if isinstance(row, RejectedRow) and row.field != "image":
            return row.field, row.reason
    return None

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
        """The batch key: the operation and a hash of what selects and configures it."""
        canonical = json.dumps(
            {
                "operation": self.operation,
                "where": " ".join(self.where.split()),
                "prompt": self.prompt,
                "settings": dict(sorted(self.settings.items())),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
        return f"{self.operation.replace('_', '-')}-{digest}"


@dataclass(frozen=True)
class SelectedBatch:
    """The batch file written for a selection."""

    key: str
    path: Path
    ids: tuple[str, ...]


def select_images(
    settings: Settings, where: str, store: ObjectStore | None = None
) -> tuple[str, ...]:
    """Ids of the stored images ``where`` selects, oldest first.

    ``where`` is the user's SQL, run inside the query sandbox (read-only, limited) like
    ``query``; only records with an image object can be worked on.
    """
    from ideogram_pipeline.history.sandbox import query_rows

    sql = (
        "SELECT id FROM generations WHERE status = 'stored' AND image_key IS NOT NULL "
        f"AND ({where}) ORDER BY created_at, id"
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

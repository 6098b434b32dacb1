"""A file's rows matched to what the history and the ledger already hold, by content.

Before a run, each row of the file is found in the batch's history by its key
(``history/row_keys.py``), wherever it stood when it was recorded, so the engine sees the
state of the row, not of the line. A run (not a dry run) then brings ``generations`` in
line with the file (``history/file_rows.py``: lines, and rows that left the file) and
refiles the ledger entries of rows that moved (``ledger_lines.py``), both under the batch's
lease. :func:`send_plan` says which rows will be sent, for the estimate and ``--max-cost``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.history.file_rows import sync_file_rows
from ideogram_pipeline.history.row_keys import keyed_rows, row_keys, state_by_line
from ideogram_pipeline.history.schema import RowState
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.history.views import HistoryNeedsMigration
from ideogram_pipeline.runs.journal import journal_directory
from ideogram_pipeline.runs.ledger_lines import entries_by_key, realign_ledger
from ideogram_pipeline.runs.will_send import SendPlan, plan_sends
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = ["MatchedRows", "match_rows", "send_plan"]


@dataclass(frozen=True)
class MatchedRows:
    """The file's row keys (line -> key) and each line's recorded state."""

    keys: dict[int, str]
    previous: dict[int, RowState]
    moved_ledger_events: int = 0
    file_rows_changed: int = 0


def match_rows(settings: Settings, store: ObjectStore, batch: Batch, *, write: bool) -> MatchedRows:
    """Match ``batch``'s rows to its history; with ``write`` (the lease held), also update
    ``generations``' lines and ``in_file`` and refile moved rows' ledger entries.

    Raises :class:`HistoryNeedsMigration` when the batch has records an earlier release
    wrote and ``migrate`` has not keyed yet: matching them by line could pay twice.
    """
    keys = row_keys(batch.rows)
    keyed = keyed_rows(settings, store, batch.key)
    if keyed.unkeyed:
        raise HistoryNeedsMigration(
            f"batch {batch.key} has {keyed.unkeyed} record(s) written by an earlier release, "
            "which knew rows by their line: run `ideogram-pipeline migrate` to key them by "
            "their content, then run the batch again"
        )
    moved = changed = 0
    if write:
        changed = sync_file_rows(HistoryTables(settings), batch.key, keys, keyed.places)
        moved = realign_ledger(store, batch.key, journal_directory(store), keys)
    return MatchedRows(keys, state_by_line(keys, keyed.states), moved, changed)


def send_plan(
    store: ObjectStore,
    batch: Batch,
    matched: MatchedRows,
    previous: Mapping[int, RowState],
    *,
    duplicates: Collection[str],
    max_inflight: int,
    resend_unknown: bool = False,
) -> SendPlan:
    """The rows a run of ``batch`` will send, given the ledger as it stands (read only)."""
    hashes = {row.row: row.request_hash() for row in batch.requests}
    ledger = entries_by_key(store, batch.key, journal_directory(store), matched.keys, hashes)
    return plan_sends(
        batch,
        previous,
        keys=matched.keys,
        ledger=ledger,
        duplicates=duplicates,
        max_inflight=max_inflight,
        resend_unknown=resend_unknown,
    )

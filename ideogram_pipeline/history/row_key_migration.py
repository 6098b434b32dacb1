"""Key the records of an earlier release by their content: part of ``migrate`` (issue 17).

Releases before issue 17 knew a batch row by its line, and their ``generations`` holds one
row per (batch, line, image). This step gives each of those rows the key a run computes
for the same row of a file (``row_keys.py``): its request hash (or, for a rejected row,
its prompt and error without the line) and its occurrence among identical rows of the
batch, counted in line order, which is the order of the file that was last run. So the
first run after the upgrade finds every row it already paid for, wherever it now stands.

``in_file`` starts true: the old release kept no other file. The audit trail's copies of
current records get the same key (by id); records of attempts a later one replaced keep
none (they are history, and no run matches them).

**Idempotent**: only rows without a key are read, so a second run finds none and commits
nothing. **Verified**: afterwards no current row lacks a key and no key is held twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import pyarrow as pa

from ideogram_pipeline.history.layout import GENERATIONS, RECORDS
from ideogram_pipeline.history.legacy import MigrationError
from ideogram_pipeline.history.row_keys import occurrence_keys, record_identity
from ideogram_pipeline.history.tables import HistoryTables, retry_commit
from ideogram_pipeline.safe_output import sql_list
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = ["KeyingResult", "key_rows", "unkeyed_rows"]


@dataclass
class KeyingResult:
    """What keying found and did."""

    rows: int = 0  # current rows keyed (or, dry, to key)
    batches: list[str] = field(default_factory=list)
    audit_records: int = 0  # audit-trail copies keyed


def unkeyed_rows(settings: Settings, store: ObjectStore) -> dict[str, int]:
    """Batch -> current rows without a row key (written by an earlier release)."""
    from ideogram_pipeline.history.views import connect, table_exists

    if not table_exists(store, GENERATIONS):
        return {}
    con = connect(settings, store, views=(GENERATIONS,))
    try:
        rows = con.execute(
            "SELECT batch, count(*) FROM generations WHERE row_key IS NULL GROUP BY batch"
        ).fetchall()
    finally:
        con.close()
    return {str(batch): int(n) for batch, n in rows}


def _keys(settings: Settings, store: ObjectStore, batches: list[str]) -> pa.Table:
    """(id, batch, row_key) for the current rows of ``batches`` that have no key."""
    from ideogram_pipeline.history.views import connect

    con = connect(settings, store, views=(GENERATIONS,))
    try:
        rows = con.execute(
            'SELECT id, batch, "row", request_hash, prompt, error, attempt_id FROM generations '
            f"WHERE row_key IS NULL AND batch IN (SELECT unnest({sql_list(batches)})) "
            'ORDER BY batch, "row", attempt_id DESC NULLS LAST, image_index'
        ).fetchall()
    finally:
        con.close()
    # Each line's identity comes from its newest attempt (the first of its rows here).
    lines: dict[tuple[str, int], str] = {}
    for _id, batch, line, request_hash, prompt, error, _attempt in rows:
        lines.setdefault((batch, line), record_identity(request_hash, prompt, error))
    keys: dict[tuple[str, int], str] = {}
    for _batch, in_batch in groupby(sorted(lines.items()), key=lambda item: item[0][0]):
        keys.update(occurrence_keys(in_batch))  # one file's lines, in line order
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.string()),
            "batch": pa.array([r[1] for r in rows], pa.string()),
            "row_key": pa.array([keys[(r[1], r[2])] for r in rows], pa.string()),
        }
    )


def _update(tables: HistoryTables, name: str, source: pa.Table, batches: list[str]) -> int:
    """Set ``row_key`` (and ``in_file`` where unset) of table ``name``'s rows by id."""

    def go() -> int:
        merger = tables.table(name).merge(
            source,
            predicate=f"t.batch IN ({sql_list(batches)[1:-1]}) AND t.id = s.id",
            source_alias="s",
            target_alias="t",
        )
        merger = merger.when_matched_update(
            updates={"row_key": "s.row_key", "in_file": "coalesce(t.in_file, true)"},
            predicate="t.row_key IS NULL",
        )
        metrics: dict[str, Any] = merger.execute()
        return int(metrics.get("num_target_rows_updated", 0))

    return retry_commit(go, "row keys")


def key_rows(settings: Settings, store: ObjectStore, *, dry_run: bool = False) -> KeyingResult:
    """Give every current row without a row key its key, and its audit copies the same."""
    unkeyed = unkeyed_rows(settings, store)
    result = KeyingResult(sum(unkeyed.values()), sorted(unkeyed))
    if dry_run or not unkeyed:
        return result
    tables = HistoryTables(settings)
    source = _keys(settings, store, result.batches)
    _update(tables, GENERATIONS, source, result.batches)
    if tables.exists(RECORDS):
        result.audit_records = _update(tables, RECORDS, source, result.batches)
    _verify(settings, store, result.batches)
    return result


def _verify(settings: Settings, store: ObjectStore, batches: list[str]) -> None:
    """Raise unless every current row of ``batches`` has a key held by it alone."""
    from ideogram_pipeline.history.views import connect

    if left := unkeyed_rows(settings, store):
        raise MigrationError(f"row keys: {sum(left.values())} rows still without a key")
    con = connect(settings, store, views=(GENERATIONS,))
    try:
        clashes = con.execute(
            "SELECT batch, row_key, image_index FROM generations "
            f"WHERE batch IN (SELECT unnest({sql_list(batches)})) "
            "GROUP BY ALL HAVING count(*) > 1 LIMIT 5"
        ).fetchall()
    finally:
        con.close()
    if clashes:
        raise MigrationError(f"row keys: held by more than one current row: {clashes}")

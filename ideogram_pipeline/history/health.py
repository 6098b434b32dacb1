"""What the history looks like and whether it is sound: plain functions behind the
``generation_history`` asset and its checks (``defs/lifecycle/``).

The tables promise one current row per id and per row key (``ROW_KEY``: MERGE keeps it so),
and an id never names two different rows in the audit trail (it may appear many times
there: a tag or pin change appends the changed row). The id check verifies all three, so
a writer that broke the promise shows in the UI instead of in someone's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ideogram_pipeline import history
from ideogram_pipeline.history.schema import ROW_KEY
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, HistoryTables
from ideogram_pipeline.lifecycle.compaction import table_files
from ideogram_pipeline.lifecycle.orphans import LATEST_SQL
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = ["CheckOutcome", "cost_non_negative", "ids_unique", "status_present", "summarise"]


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    failures: int
    examples: list[str]
    description: str


def _data_files(settings: Settings) -> tuple[int, int]:
    """Data files (and bytes) the current versions of both history tables read."""
    tables = HistoryTables(settings)
    files = size = 0
    for name in (GENERATIONS, RECORDS):
        if tables.exists(name):
            count, total = table_files(tables.table(name))
            files, size = files + count, size + total
    return files, size


def summarise(settings: Settings, store: ObjectStore) -> dict[str, Any]:
    """Row counts by status, files, bytes, date span and pins: the history at a glance."""
    files, size = _data_files(settings)
    con = history.connect(settings, store)
    try:
        records, versions = con.execute(
            "SELECT count(DISTINCT id), count(*) FROM generation_records"
        ).fetchone() or (0, 0)
        current, oldest, newest, partitions, batches, pinned = con.execute(
            "SELECT count(*), min(created_at), max(created_at), count(DISTINCT (date, batch)), "
            "count(DISTINCT batch), count(*) FILTER (pinned) FROM generations"
        ).fetchone() or (0, None, None, 0, 0, 0)
        statuses = dict(
            con.execute("SELECT status, count(*) FROM generations GROUP BY ALL").fetchall()
        )
        # Superseded records keep their images until retention: count every id's newest.
        stored_bytes = con.execute(
            f"SELECT coalesce(sum(size_bytes), 0) FROM ({LATEST_SQL}) WHERE status = 'stored'"
        ).fetchone()
    finally:
        con.close()
    return {
        "records": int(records or 0),
        "record_versions": int(versions or 0),
        "current_rows": int(current or 0),
        "by_status": {str(k): int(v) for k, v in statuses.items()},
        "partitions": int(partitions or 0),
        "batches": int(batches or 0),
        "metadata_files": files,
        "metadata_bytes": size,
        "image_bytes": int(stored_bytes[0]) if stored_bytes else 0,
        "oldest": oldest.isoformat() if oldest else None,
        "newest": newest.isoformat() if newest else None,
        "pinned": int(pinned or 0),
    }


def _outcome(
    settings: Settings, store: ObjectStore, count_sql: str, examples_sql: str, description: str
) -> CheckOutcome:
    con = history.connect(settings, store)
    try:
        row = con.execute(count_sql).fetchone()
        failures = int(row[0]) if row else 0
        examples = [str(r[0]) for r in con.execute(examples_sql).fetchall()] if failures else []
    finally:
        con.close()
    return CheckOutcome(failures == 0, failures, examples, description)


def ids_unique(settings: Settings, store: ObjectStore) -> CheckOutcome:
    key = ", ".join(f'"{column}"' for column in ROW_KEY)
    clashes = (
        # An id held by two current rows, or by records of two different rows ...
        "SELECT id AS example FROM generations GROUP BY id HAVING count(*) > 1 "
        # (records an earlier release wrote carry no row key until ``migrate`` keys them)
        "UNION ALL SELECT id FROM generation_records WHERE row_key IS NOT NULL GROUP BY id "
        f"HAVING count(DISTINCT ({key})) > 1 "
        # ... or a row key held by two current rows.
        f"UNION ALL SELECT concat_ws('/', {key}) FROM generations WHERE row_key IS NOT NULL "
        f"GROUP BY {key} HAVING count(*) > 1"
    )
    return _outcome(
        settings,
        store,
        f"SELECT count(*) FROM ({clashes})",
        f"SELECT example FROM ({clashes}) ORDER BY 1 LIMIT 10",
        "ids or row keys shared by different rows",
    )


def status_present(settings: Settings, store: ObjectStore) -> CheckOutcome:
    where = "FROM generation_records WHERE status IS NULL OR trim(status) = ''"
    return _outcome(
        settings,
        store,
        f"SELECT count(DISTINCT id) {where}",
        f"SELECT DISTINCT id {where} ORDER BY id LIMIT 10",
        "records without a status",
    )


def cost_non_negative(settings: Settings, store: ObjectStore) -> CheckOutcome:
    where = "FROM generation_records WHERE cost_usd < 0"
    return _outcome(
        settings,
        store,
        f"SELECT count(DISTINCT id) {where}",
        f"SELECT DISTINCT id {where} ORDER BY id LIMIT 10",
        "records with a negative cost",
    )

"""What the history looks like and whether it is sound: plain functions behind the
``generation_history`` asset and its checks (``defs/lifecycle.py``).

The id check reads the Parquet files directly, not the ``generation_records`` view: the view
keeps one row per id within a partition (to hide the moment of a compaction), which would
also hide two different records that wrongly share an id. Two copies of the same record
(identical keys) are not a violation; two records with the same id and different
(date, batch, run, row, image index) are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ideogram_pipeline import history
from ideogram_pipeline.compaction import count_files
from ideogram_pipeline.pins import pinned_ids
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX

__all__ = ["CheckOutcome", "cost_non_negative", "ids_unique", "status_present", "summarise"]


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    failures: int
    examples: list[str]
    description: str


def summarise(settings: Settings, store: ObjectStore) -> dict[str, Any]:
    """Row counts by status, files, bytes, date span and pins: the history at a glance."""
    files, size = count_files(store, GENERATIONS_PREFIX)
    con = history.connect(settings, store)
    try:
        records, current, oldest, newest, partitions, batches = con.execute(
            "SELECT (SELECT count(*) FROM generation_records), count(*), min(created_at), "
            "max(created_at), count(DISTINCT (date, batch)), count(DISTINCT batch) "
            "FROM generations"
        ).fetchone() or (0, 0, None, None, 0, 0)
        statuses = dict(
            con.execute("SELECT status, count(*) FROM generations GROUP BY ALL").fetchall()
        )
        stored_bytes = con.execute(
            "SELECT coalesce(sum(size_bytes), 0) FROM generation_records WHERE status = 'stored'"
        ).fetchone()
    finally:
        con.close()
    return {
        "records": int(records or 0),
        "current_rows": int(current or 0),
        "by_status": {str(k): int(v) for k, v in statuses.items()},
        "partitions": int(partitions or 0),
        "batches": int(batches or 0),
        "metadata_files": files,
        "metadata_bytes": size,
        "image_bytes": int(stored_bytes[0]) if stored_bytes else 0,
        "oldest": oldest.isoformat() if oldest else None,
        "newest": newest.isoformat() if newest else None,
        "pinned": len(pinned_ids(store)),
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
    if not count_files(store, GENERATIONS_PREFIX)[0]:
        return CheckOutcome(True, 0, [], "no records yet")
    glob = store.uri(f"{GENERATIONS_PREFIX}/**/*.parquet").replace("'", "''")
    clashes = (
        f"SELECT id FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true) "
        'GROUP BY id HAVING count(DISTINCT (date, batch, run_id, "row", image_index)) > 1'
    )
    return _outcome(
        settings,
        store,
        f"SELECT count(*) FROM ({clashes})",
        f"{clashes} ORDER BY id LIMIT 10",
        "ids shared by different records",
    )


def status_present(settings: Settings, store: ObjectStore) -> CheckOutcome:
    where = "FROM generation_records WHERE status IS NULL OR trim(status) = ''"
    return _outcome(
        settings,
        store,
        f"SELECT count(*) {where}",
        f"SELECT id {where} ORDER BY id LIMIT 10",
        "records without a status",
    )


def cost_non_negative(settings: Settings, store: ObjectStore) -> CheckOutcome:
    where = "FROM generation_records WHERE cost_usd < 0"
    return _outcome(
        settings,
        store,
        f"SELECT count(*) {where}",
        f"SELECT id {where} ORDER BY id LIMIT 10",
        "records with a negative cost",
    )

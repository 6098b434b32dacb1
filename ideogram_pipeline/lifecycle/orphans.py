"""The orphan sweep: objects without a record, records without an object, and the size check.

Two kinds of disagreement between ``images/`` and the history tables:

- **Orphan objects**: an image object no record points at (``image_key`` in
  ``generation_records`` or ``generations``). A running batch stores images before it
  flushes their rows, so an object younger than the grace period (``[orphans]
  grace_hours``, default 24) is never called an orphan, only counted as young. ``--fix``
  deletes orphans older than the grace period.
- **Dangling records**: an id whose newest record says ``stored`` while its object is
  missing. ``--fix`` marks them: ``status`` becomes ``failed`` with an error saying the
  object was found missing and when, so counts and checks stop claiming an image that is
  not there, and a re-run of the batch regenerates it (failed rows are retried). A current
  row is UPDATEd in ``generations`` (which appends the changed row to the audit trail); a
  superseded one gets the marked record appended to ``generation_records``. Either way
  the id's newest record is the marked one, and the original ``generate`` record stays.

A fix writes an audit record under ``metadata/audit/orphans/``. A cleanup killed between
deleting objects and deleting rows leaves dangling records of expired ids: marking them is
harmless (they are still expired, and the next cleanup deletes them).
:func:`verify_stored_objects` is the Dagster asset check's half: every id whose newest
record is ``stored`` has its object, with the recorded size (sampled when large).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from ideogram_pipeline import history
from ideogram_pipeline.history.schema import TABLE_SCHEMA
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, HistoryTables
from ideogram_pipeline.lifecycle.policy import prune_empty_dirs, put_json, utc_stamp
from ideogram_pipeline.safe_output import sql_literal
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectInfo, ObjectStore

__all__ = ["LATEST_SQL", "OrphanReport", "SizeCheck", "sweep_orphans", "verify_stored_objects"]

IMAGES_PREFIX = "images/"
AUDIT_PREFIX = "metadata/audit/orphans"
#: Histories with at most this many stored ids are checked in full; larger ones sampled.
FULL_CHECK_LIMIT = 2000
#: Keys per ``ObjectStore.delete`` call (S3's DeleteObjects limit).
#: Each id's newest record: what the history says about it now (current or superseded).
LATEST_SQL = (
    "SELECT * FROM generation_records "
    "QUALIFY row_number() OVER (PARTITION BY id ORDER BY recorded_at DESC) = 1"
)
#: The audit event of a record marked by the sweep (``generation_records.event``).
EVENT = "sweep"


@dataclass
class OrphanReport:
    """What the sweep found and, with ``fix``, what it changed."""

    objects_seen: int = 0
    orphan_objects: list[ObjectInfo] = field(default_factory=list)  # past the grace period
    young_objects: int = 0  # no record yet, but younger than the grace period
    dangling_rows: list[dict[str, Any]] = field(default_factory=list)
    deleted_objects: int = 0
    marked_rows: int = 0
    audit_key: str | None = None

    @property
    def orphan_bytes(self) -> int:
        return sum(info.size for info in self.orphan_objects)


def _referenced(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Every image key any record or current row points at."""
    return {
        key
        for (key,) in con.execute(
            "SELECT image_key FROM generation_records WHERE image_key IS NOT NULL "
            "UNION SELECT image_key FROM generations WHERE image_key IS NOT NULL"
        ).fetchall()
    }


def _stored(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Ids whose newest record claims an image, and whether each is a current row."""
    return (
        con.execute(
            "SELECT l.id, l.date::VARCHAR AS date, l.batch, l.image_key, l.size_bytes, "
            f"l.id IN (SELECT id FROM generations) AS current FROM ({LATEST_SQL}) l "
            "WHERE l.status = 'stored' AND l.image_key IS NOT NULL ORDER BY l.id"
        )
        .fetch_arrow_table()
        .to_pylist()
    )


def _find(settings: Settings, store: ObjectStore, grace_hours: float, report: OrphanReport) -> None:
    # List objects before reading the rows: an image stored (and its row flushed) between
    # the two reads then shows as referenced, never as an orphan.
    objects = {info.key: info for info in store.list(IMAGES_PREFIX)}
    con = history.connect(settings, store)
    try:
        referenced = _referenced(con)
        stored = _stored(con)
    finally:
        con.close()
    horizon = time.time() - grace_hours * 3600
    report.objects_seen = len(objects)
    for key, info in sorted(objects.items()):
        if key in referenced:
            continue
        if info.last_modified < horizon:
            report.orphan_objects.append(info)
        else:
            report.young_objects += 1
    present = set(objects)
    present.update(k for k in referenced if k not in objects and store.head(k) is not None)
    report.dangling_rows = [row for row in stored if row["image_key"] not in present]


def _mark(settings: Settings, rows: list[dict[str, Any]], note: str) -> None:
    """Mark ``rows`` failed: current ones by an UPDATE of ``generations``, superseded ones
    by appending their marked newest record."""
    tables = HistoryTables(settings)
    current: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["current"]:
            current[row["batch"]].append(row["id"])
    if current:
        tables.change(
            current,
            event=EVENT,
            updates={"status": "'failed'", "error": sql_literal(note)},
        )
    superseded = [row["id"] for row in rows if not row["current"]]
    if not superseded:
        return
    con = history.connect(settings, views=(RECORDS,))
    try:
        con.register("_ids", pa.table({"id": pa.array(superseded, pa.string())}))
        marked = con.execute(
            f"SELECT * REPLACE ('failed' AS status, ? AS error, ? AS event, "
            f"now() AS recorded_at) FROM ({LATEST_SQL}) WHERE id IN (SELECT id FROM _ids)",
            [note, EVENT],
        ).fetch_arrow_table()
    finally:
        con.close()
    tables.append(RECORDS, marked.select(TABLE_SCHEMA.names).cast(TABLE_SCHEMA))


def _fix(
    settings: Settings,
    store: ObjectStore,
    report: OrphanReport,
    sweep_id: str,
    grace_hours: float,
    by: str,
) -> None:
    keys = [info.key for info in report.orphan_objects]
    store.delete(keys)  # the store batches (S3: 1,000 keys per DeleteObjects)
    report.deleted_objects = len(keys)
    prune_empty_dirs(store, "images")
    found = datetime.now(UTC).isoformat(timespec="seconds")
    if report.dangling_rows:
        note = f"image object missing (found by the orphan sweep at {found})"
        _mark(settings, report.dangling_rows, note)
    report.marked_rows = len(report.dangling_rows)
    key = f"{AUDIT_PREFIX}/date={found[:10]}/{sweep_id}.json"
    put_json(
        store,
        key,
        {
            "action": "orphan fix",
            "sweep_id": sweep_id,
            "at": found,
            "by": by,
            "grace_hours": grace_hours,
            "deleted_objects": keys,
            "deleted_bytes": report.orphan_bytes,
            "marked_rows": [row["id"] for row in report.dangling_rows],
        },
    )
    report.audit_key = key


def sweep_orphans(
    settings: Settings,
    store: ObjectStore,
    *,
    grace_hours: float = 24.0,
    fix: bool = False,
    by: str = "",
) -> OrphanReport:
    """Find (and with ``fix``, repair) disagreements between objects and records."""
    report = OrphanReport()
    _find(settings, store, grace_hours, report)
    if fix:
        sweep_id = f"{utc_stamp()}-{uuid.uuid4().hex[:8]}"
        _fix(settings, store, report, sweep_id, grace_hours, by)
    return report


@dataclass
class SizeCheck:
    checked: int
    total: int
    missing: list[str]
    wrong_size: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong_size


def verify_stored_objects(
    settings: Settings, store: ObjectStore, *, limit: int = FULL_CHECK_LIMIT, seed: int = 42
) -> SizeCheck:
    """Every id whose newest record is ``stored`` has its object, with the recorded size;
    a sample when there are more than ``limit``.

    Superseded ids count too, not only current rows: a record replaced by a re-run still
    claims its image until retention deletes it.
    """
    con = history.connect(settings, store, views=(RECORDS, GENERATIONS))
    try:
        con.execute(
            f"CREATE TEMP TABLE _stored AS SELECT id, image_key, size_bytes FROM ({LATEST_SQL}) "
            # (a describe's record is stored text: no object)
            "WHERE status = 'stored' AND image_key IS NOT NULL"
        )
        total = con.execute("SELECT count(*) FROM _stored").fetchone()[0]  # type: ignore[index]
        sample = (
            "" if total <= limit else f" USING SAMPLE reservoir({limit} ROWS) REPEATABLE ({seed})"
        )
        rows = con.execute(f"SELECT id, image_key, size_bytes FROM _stored{sample}").fetchall()
    finally:
        con.close()
    with ThreadPoolExecutor(max_workers=16) as pool:
        heads = list(pool.map(lambda row: store.head(row[1]) if row[1] else None, rows))
    missing = [row[0] for row, head in zip(rows, heads, strict=True) if head is None]
    wrong = [
        row[0]
        for row, head in zip(rows, heads, strict=True)
        if head is not None and head.size != row[2]
    ]
    return SizeCheck(len(rows), int(total), missing, wrong)

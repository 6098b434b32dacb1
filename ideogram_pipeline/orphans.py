"""The orphan sweep: objects without a row, rows without an object, and the size check.

Two kinds of disagreement between ``images/`` and the metadata:

- **Orphan objects**: an image object no record points at (``image_key``). A running batch
  stores images before it flushes their rows, so an object younger than the grace period
  (``[orphans] grace_hours``, default 24) is never called an orphan, only counted as young.
  ``--fix`` deletes orphans older than the grace period.
- **Dangling rows**: a ``stored`` record whose object is missing. ``--fix`` marks them:
  the row's status becomes ``failed`` with an error saying the object was found missing
  and when, so counts and checks stop claiming an image that is not there, and a re-run of
  the batch regenerates it (failed rows are retried). The row is rewritten the way a
  cleanup rewrites rows (replacement written before the old file is deleted).

A fix holds the lifecycle lock, finishes interrupted cleanups first (their half-deleted
state would otherwise look like dangling rows), and writes an audit record under
``metadata/audit/orphans/``. :func:`verify_stored_objects` is the Dagster asset check's
half: every ``stored`` row's object exists with the recorded size (sampled when large).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ideogram_pipeline import history
from ideogram_pipeline.lifecycle import (
    LifecycleLock,
    prune_empty_dirs,
    put_json,
    rewrite_rows,
    utc_stamp,
)
from ideogram_pipeline.retention import pending_cleanups, resume_pending
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectInfo, ObjectStore
from ideogram_pipeline.storage.metadata import partition_prefix

__all__ = ["OrphanReport", "SizeCheck", "sweep_orphans", "verify_stored_objects"]

IMAGES_PREFIX = "images/"
AUDIT_PREFIX = "metadata/audit/orphans"
#: Histories with at most this many stored rows are checked in full; larger ones sampled.
FULL_CHECK_LIMIT = 2000


@dataclass
class OrphanReport:
    """What the sweep found and, with ``fix``, what it changed."""

    objects_seen: int = 0
    orphan_objects: list[ObjectInfo] = field(default_factory=list)  # past the grace period
    young_objects: int = 0  # no row yet, but younger than the grace period
    dangling_rows: list[dict[str, Any]] = field(default_factory=list)
    deleted_objects: int = 0
    marked_rows: int = 0
    pending_cleanups: list[str] = field(default_factory=list)
    audit_key: str | None = None

    @property
    def orphan_bytes(self) -> int:
        return sum(info.size for info in self.orphan_objects)


def _referenced(settings: Settings, store: ObjectStore) -> tuple[set[str], list[dict[str, Any]]]:
    """Every image key any record points at, and the ``stored`` rows with their keys."""
    con = history.connect(settings, store)
    try:
        keys = {
            key
            for (key,) in con.execute(
                "SELECT DISTINCT image_key FROM generation_records WHERE image_key IS NOT NULL"
            ).fetchall()
        }
        stored = con.execute(
            "SELECT id, date::VARCHAR AS date, batch, image_key, size_bytes FROM "
            "generation_records WHERE status = 'stored' AND image_key IS NOT NULL"
        ).fetch_arrow_table()
    finally:
        con.close()
    return keys, stored.to_pylist()


def _mark_missing(table: pa.Table, hit: pa.ChunkedArray, note: str) -> pa.Table:
    status = pc.if_else(hit, pa.scalar("failed"), table.column("status"))
    error = pc.if_else(hit, pa.scalar(note), table.column("error"))
    table = table.set_column(table.schema.get_field_index("status"), "status", status)
    return table.set_column(table.schema.get_field_index("error"), "error", error)


def _fix(
    store: ObjectStore, report: OrphanReport, sweep_id: str, grace_hours: float, by: str
) -> None:
    report.deleted_objects = len(report.orphan_objects)
    store.delete([info.key for info in report.orphan_objects])
    prune_empty_dirs(store, "images")
    found = datetime.now(UTC).isoformat(timespec="seconds")
    by_partition: dict[tuple[str, str], set[str]] = {}
    for row in report.dangling_rows:
        by_partition.setdefault((row["date"], row["batch"]), set()).add(row["id"])
    for (day, batch), ids in sorted(by_partition.items()):

        def change(table: pa.Table, hit: pa.ChunkedArray, day: str = day) -> pa.Table:
            note = f"image object missing (found by the orphan sweep at {found}, partition {day})"
            return _mark_missing(table, hit, note)

        rewrite_rows(store, partition_prefix(day, batch), ids, f"m{sweep_id[-8:]}", change)
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
            "deleted_objects": [info.key for info in report.orphan_objects],
            "deleted_bytes": report.orphan_bytes,
            "marked_rows": [row["id"] for row in report.dangling_rows],
            "resumed_cleanups": report.pending_cleanups,
        },
    )
    report.audit_key = key


def _find(settings: Settings, store: ObjectStore, grace_hours: float, report: OrphanReport) -> None:
    # List objects before reading the rows: an image stored (and its row flushed) between
    # the two reads then shows as referenced, never as an orphan.
    objects = {info.key: info for info in store.list(IMAGES_PREFIX)}
    referenced, stored = _referenced(settings, store)
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


def sweep_orphans(
    settings: Settings,
    store: ObjectStore,
    *,
    grace_hours: float = 24.0,
    fix: bool = False,
    by: str = "",
) -> OrphanReport:
    """Find (and with ``fix``, repair) disagreements between objects and rows."""
    report = OrphanReport()
    if not fix:
        report.pending_cleanups = pending_cleanups(store)
        _find(settings, store, grace_hours, report)
        return report
    with LifecycleLock(store, "orphan sweep"):
        report.pending_cleanups = resume_pending(store)
        _find(settings, store, grace_hours, report)
        sweep_id = f"{utc_stamp()}-{uuid.uuid4().hex[:8]}"
        _fix(store, report, sweep_id, grace_hours, by)
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
    """Every ``stored`` record's object exists with its recorded size; a sample when large.

    All records count, not only the current ones: a record superseded by a re-run still
    claims its image.
    """
    con = history.connect(settings, store)
    try:
        total = con.execute(
            "SELECT count(*) FROM generation_records WHERE status = 'stored'"
        ).fetchone()[0]  # type: ignore[index]
        sample = (
            "" if total <= limit else f" USING SAMPLE reservoir({limit} ROWS) REPEATABLE ({seed})"
        )
        rows = con.execute(
            "SELECT id, image_key, size_bytes FROM (SELECT * FROM generation_records "
            f"WHERE status = 'stored'){sample}"
        ).fetchall()
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

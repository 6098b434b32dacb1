"""Retention cleanup: delete images and metadata rows older than the policy allows.

A run goes through phases, each safe to repeat, so a crash anywhere is repaired by running
again (every run first finishes any cleanup a crash left behind):

1. **Manifest.** The records to delete are chosen once, by policy, and written to
   ``metadata/lifecycle/cleanup/<id>/records.parquet``, then ``manifest.json`` (its presence
   commits the plan). Everything later works from the manifest, not from a new query.
2. **Roll-up.** Each record's usage columns (no prompt, no URLs) go to
   ``metadata/usage_rollup/date=D/batch=B/<id>.parquet`` before any row goes, so reports
   keep counting what was generated and paid for. Reports count a rolled-up record only
   when its row is gone from the history, so a crash between phases never counts it twice.
3. **Objects.** Image objects are deleted through ``ObjectStore.delete`` (``DeleteObjects``,
   up to 1,000 keys a call on S3). Missing objects are not errors.
4. **Rows.** Each affected partition's files are read; a file whose rows all go is deleted
   (with date partitioning a whole expired day is just a few file deletions), a file with
   survivors is replaced by ``<base>.c<id>.parquet`` holding them, written before the old
   file is deleted. The name is fixed by the cleanup id, so a retry rewrites the same key.
   Readers never see a gap; the history views drop the moment's duplicate rows by ``id``.
5. **Audit and done.** ``metadata/audit/cleanup/date=D/<id>.json`` (what, when, why, by which
   policy) outlives the deleted rows; ``done.json`` marks the manifest finished.

Which records go: those in ``generation_records`` (every run's records) whose
``created_at`` is older than their retention (``RetentionPolicy.days_for`` their tags),
except pinned ids and records with a keep tag. Tags are read from the history views, which
merge the tag-change log (``tag ID --add keep``, ``tag_log.py``) into every record's
``tags`` at query time, so a tag added after the fact counts; there is no second tag
mechanism here.
"""

from __future__ import annotations

import getpass
import os
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ideogram_pipeline import history
from ideogram_pipeline.lifecycle import (
    CRASH_ENV,
    LIFECYCLE_PREFIX,
    LifecycleLock,
    RetentionPolicy,
    crash_point,
    get_json,
    prune_empty_dirs,
    put_json,
    read_parquet_object,
    rewrite_rows,
    utc_stamp,
    write_parquet_object,
)
from ideogram_pipeline.pins import pinned_ids
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX, partition_prefix

__all__ = [
    "AUDIT_PREFIX",
    "CLEANUP_PREFIX",
    "USAGE_COLUMNS",
    "USAGE_PREFIX",
    "CleanupPlan",
    "CleanupResult",
    "pending_cleanups",
    "plan_cleanup",
    "run_cleanup",
]

CLEANUP_PREFIX = f"{LIFECYCLE_PREFIX}/cleanup"
USAGE_PREFIX = "metadata/usage_rollup"
AUDIT_PREFIX = "metadata/audit/cleanup"
#: Keys per ``ObjectStore.delete`` call: S3's DeleteObjects limit, and a progress step.
DELETE_CHUNK = 1000

#: What a deleted record leaves behind for reports: usage, never prompt text or URLs.
USAGE_COLUMNS = (
    "id",
    "date",
    "batch",
    "created_at",
    "run_id",
    "model",
    "rendering_speed",
    "style_type",
    "status",
    "error",
    "cost_usd",
    "size_bytes",
    "latency_ms",
    "simulated",
)

_SELECT_SQL = """
WITH candidates AS (
    SELECT *, coalesce(tags, []) AS effective_tags FROM generation_records
    WHERE created_at < $horizon AND id NOT IN (SELECT id FROM _pinned)
),
aged AS (
    SELECT *,
        CASE WHEN list_has_any(effective_tags, $keep) THEN NULL
             ELSE coalesce(
                (SELECT max(p.days) FROM _policy p WHERE list_contains(effective_tags, p.tag)),
                $default_days)
        END AS retention_days
    FROM candidates
)
SELECT {columns}, image_key, retention_days
FROM aged
WHERE retention_days IS NOT NULL
  AND epoch_us(created_at) < epoch_us($as_of) - CAST(retention_days * 86400e6 AS BIGINT)
ORDER BY date, batch, created_at, id
"""


@dataclass
class CleanupPlan:
    """What a cleanup deletes: the records, and the partitions they empty or thin out."""

    cleanup_id: str
    as_of: datetime
    policy: RetentionPolicy
    records: pa.Table
    partitions: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    by: str = ""
    planned_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def count(self) -> int:
        return self.records.num_rows

    @property
    def objects(self) -> list[str]:
        return [key for key in self.records.column("image_key").to_pylist() if key]

    @property
    def bytes(self) -> int:
        return int(pc.sum(self.records.column("size_bytes")).as_py() or 0)

    @property
    def oldest(self) -> datetime | None:
        return pc.min(self.records.column("created_at")).as_py() if self.count else None

    @property
    def newest(self) -> datetime | None:
        return pc.max(self.records.column("created_at")).as_py() if self.count else None

    @property
    def whole_partitions(self) -> int:
        return sum(1 for p in self.partitions if p["expired"] == p["total"])

    def by_status(self) -> dict[str, int]:
        counts = pc.value_counts(self.records.column("status")).to_pylist()
        return {item["values"]: item["counts"] for item in counts}

    def summary(self) -> dict[str, Any]:
        return {
            "cleanup_id": self.cleanup_id,
            "planned_at": self.planned_at.isoformat(),
            "as_of": self.as_of.isoformat(),
            "policy": self.policy.as_dict(),
            "reason": self.reason,
            "by": self.by,
            "records": self.count,
            "objects": len(self.objects),
            "bytes": self.bytes,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
            "by_status": self.by_status(),
            "partitions": self.partitions,
            "whole_partition_drops": self.whole_partitions,
        }


@dataclass
class CleanupResult:
    """What a run did. ``resumed`` lists earlier interrupted cleanups it finished first."""

    plan: CleanupPlan
    dry_run: bool
    files_deleted: int = 0
    files_written: int = 0
    resumed: list[str] = field(default_factory=list)
    audit_key: str | None = None


def _default_by() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def plan_cleanup(
    settings: Settings,
    store: ObjectStore,
    policy: RetentionPolicy,
    as_of: datetime,
    *,
    reason: str = "",
    by: str = "",
) -> CleanupPlan:
    """Choose the records to delete now (nothing is written)."""
    con = history.connect(settings, store)
    try:
        return _plan(con, store, policy, as_of, reason=reason, by=by)
    finally:
        con.close()


def _plan(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    policy: RetentionPolicy,
    as_of: datetime,
    *,
    reason: str,
    by: str,
) -> CleanupPlan:
    pinned = sorted(pinned_ids(store))
    con.register("_pinned", pa.table({"id": pa.array(pinned, pa.string())}))
    con.register(
        "_policy",
        pa.table(
            {
                "tag": pa.array(list(policy.tag_days), pa.string()),
                "days": pa.array(list(policy.tag_days.values()), pa.float64()),
            }
        ),
    )
    columns = ", ".join(f'"{name}"' for name in USAGE_COLUMNS)
    records = con.execute(
        _SELECT_SQL.format(columns=columns),
        {
            "keep": list(policy.keep_tags),
            "default_days": policy.default_days,
            "as_of": as_of,
            # Nothing younger than the shortest retention can go: prune early.
            "horizon": as_of
            - timedelta(days=min([policy.default_days, *policy.tag_days.values()])),
        },
    ).fetch_arrow_table()
    partitions = []
    if records.num_rows:
        con.register("_expired", records)
        records = _keep_shared_images(con, records)
        con.register("_expired", records)
        rows = con.execute(
            "SELECT e.date::VARCHAR, e.batch, count(*) AS expired, any_value(t.total) "
            "FROM _expired e JOIN (SELECT date, batch, count(*) AS total FROM generation_records "
            "GROUP BY ALL) t ON t.date = e.date AND t.batch = e.batch GROUP BY ALL ORDER BY 1, 2"
        ).fetchall()
        partitions = [
            {"date": d, "batch": b, "expired": int(e), "total": int(t)} for d, b, e, t in rows
        ]
    cleanup_id = f"{utc_stamp()}-{uuid.uuid4().hex[:8]}"
    return CleanupPlan(cleanup_id, as_of, policy, records, partitions, reason, by or _default_by())


def _keep_shared_images(con: duckdb.DuckDBPyConnection, records: pa.Table) -> pa.Table:
    """Linked duplicates and reproductions can share an image with a record that stays:
    such an image is not deleted with the expiring record (its key is cleared in the plan)."""
    shared = {
        key
        for (key,) in con.execute(
            "SELECT DISTINCT image_key FROM generation_records WHERE image_key IN "
            "(SELECT image_key FROM _expired) AND id NOT IN (SELECT id FROM _expired)"
        ).fetchall()
    }
    if not shared:
        return records
    keys = [None if key in shared else key for key in records.column("image_key").to_pylist()]
    position = records.schema.get_field_index("image_key")
    return records.set_column(position, "image_key", pa.array(keys, pa.string()))


# -- manifests --------------------------------------------------------------------------


def _dir(cleanup_id: str) -> str:
    return f"{CLEANUP_PREFIX}/{cleanup_id}"


def pending_cleanups(store: ObjectStore) -> list[str]:
    """Cleanups whose manifest was written but never marked done (a crash), oldest first."""
    manifests, done = set(), set()
    for info in store.list(CLEANUP_PREFIX + "/"):
        parts = info.key[len(CLEANUP_PREFIX) + 1 :].split("/")
        if len(parts) == 2 and parts[1] == "manifest.json":
            manifests.add(parts[0])
        elif len(parts) == 2 and parts[1] == "done.json":
            done.add(parts[0])
    return sorted(manifests - done)


def _write_manifest(store: ObjectStore, plan: CleanupPlan) -> None:
    write_parquet_object(store, f"{_dir(plan.cleanup_id)}/records.parquet", plan.records)
    put_json(store, f"{_dir(plan.cleanup_id)}/manifest.json", plan.summary())


def _load_manifest(store: ObjectStore, cleanup_id: str) -> CleanupPlan:
    summary = get_json(store, f"{_dir(cleanup_id)}/manifest.json")
    records = read_parquet_object(store, f"{_dir(cleanup_id)}/records.parquet")
    policy = RetentionPolicy(
        float(summary["policy"]["default_days"]),
        dict(summary["policy"]["tag_days"]),
        tuple(summary["policy"]["keep_tags"]),
    )
    return CleanupPlan(
        cleanup_id,
        datetime.fromisoformat(summary["as_of"]),
        policy,
        records,
        summary["partitions"],
        summary.get("reason", ""),
        summary.get("by", ""),
        datetime.fromisoformat(summary["planned_at"]),
    )


# -- phases -----------------------------------------------------------------------------


def _by_partition(records: pa.Table) -> Iterator[tuple[str, str, pa.Table]]:
    dates = [str(d) for d in records.column("date").to_pylist()]
    batches = records.column("batch").to_pylist()
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, key in enumerate(zip(dates, batches, strict=True)):
        groups[key].append(index)
    for (day, batch), indices in sorted(groups.items()):
        yield day, batch, records.take(indices)


def _write_rollup(store: ObjectStore, plan: CleanupPlan) -> None:
    stamp = pa.scalar(plan.planned_at, pa.timestamp("us", tz="UTC"))
    for day, batch, part in _by_partition(plan.records):
        table = part.select([c for c in USAGE_COLUMNS if c not in ("date", "batch")])
        table = table.append_column("deleted_at", pa.array([stamp] * part.num_rows))
        table = table.append_column("cleanup_id", pa.array([plan.cleanup_id] * part.num_rows))
        key = f"{USAGE_PREFIX}/date={day}/batch={batch}/{plan.cleanup_id}.parquet"
        write_parquet_object(store, key, table)


def _delete_objects(store: ObjectStore, keys: list[str]) -> None:
    if keys and os.environ.get(CRASH_ENV) == "mid-objects":  # tests: die half-way through
        store.delete(keys[: max(1, len(keys) // 2)])
        crash_point("mid-objects")
    for start in range(0, len(keys), DELETE_CHUNK):
        store.delete(keys[start : start + DELETE_CHUNK])


def remove_rows(store: ObjectStore, prefix: str, ids: set[str], tag: str) -> tuple[int, int]:
    """Drop the rows with ``ids`` from the Parquet files under ``prefix``.

    Returns (files deleted, files written). A file left without rows is deleted; a file
    with survivors is replaced by ``<base>.<tag>.parquet``, written before the old file is
    deleted (see the module docstring for why this order and this name).
    """
    return rewrite_rows(store, prefix, ids, tag, lambda table, hit: table.filter(pc.invert(hit)))


def _execute(store: ObjectStore, plan: CleanupPlan, result: CleanupResult) -> None:
    _write_rollup(store, plan)
    crash_point("after-rollup")
    _delete_objects(store, plan.objects)
    crash_point("after-objects")
    tag = f"c{plan.cleanup_id.rsplit('-', 1)[-1]}"
    for number, (day, batch, part) in enumerate(_by_partition(plan.records)):
        ids = set(part.column("id").to_pylist())
        deleted, written = remove_rows(store, partition_prefix(day, batch), ids, tag)
        result.files_deleted += deleted
        result.files_written += written
        if number == 0:
            crash_point("mid-partitions")
    prune_empty_dirs(store, GENERATIONS_PREFIX)
    prune_empty_dirs(store, "images")
    _write_audit(store, plan, result)
    crash_point("before-done")
    put_json(
        store,
        f"{_dir(plan.cleanup_id)}/done.json",
        {"audit": result.audit_key, "files_deleted": result.files_deleted},
    )


def _write_audit(store: ObjectStore, plan: CleanupPlan, result: CleanupResult) -> None:
    """The record that outlives the rows: what went, when, why and by which policy."""
    now = datetime.now(UTC)
    key = f"{AUDIT_PREFIX}/date={now.date().isoformat()}/{plan.cleanup_id}.json"
    audit = {
        **plan.summary(),
        "action": "delete" if plan.count else "nothing expired",
        "finished_at": now.isoformat(),
        "files_deleted": result.files_deleted,
        "files_written": result.files_written,
        "resumed": result.resumed,
    }
    audit.pop("partitions")  # the manifest keeps the full list; the audit stays small
    audit["partitions"] = len(plan.partitions)
    put_json(store, key, audit)
    result.audit_key = key


def resume_pending(store: ObjectStore) -> list[str]:
    """Finish every interrupted cleanup (the caller holds the lock); return their ids."""
    finished = []
    for cleanup_id in pending_cleanups(store):
        plan = _load_manifest(store, cleanup_id)
        _execute(store, plan, CleanupResult(plan, dry_run=False))
        finished.append(cleanup_id)
    return finished


def run_cleanup(
    settings: Settings,
    store: ObjectStore,
    policy: RetentionPolicy,
    as_of: datetime,
    *,
    dry_run: bool = False,
    reason: str = "",
    by: str = "",
) -> CleanupResult:
    """Plan and (unless ``dry_run``) carry out a cleanup, finishing interrupted ones first.

    A dry run writes nothing at all: not the manifest, not the audit, not the roll-up.
    """
    if dry_run:
        plan = plan_cleanup(settings, store, policy, as_of, reason=reason, by=by)
        result = CleanupResult(plan, dry_run=True)
        result.resumed = pending_cleanups(store)  # would be finished first
        return result
    with LifecycleLock(store, "cleanup"):
        resumed = resume_pending(store)
        plan = plan_cleanup(settings, store, policy, as_of, reason=reason, by=by)
        result = CleanupResult(plan, dry_run=False, resumed=resumed)
        if plan.count == 0:
            _write_audit(store, plan, result)
            return result
        _write_manifest(store, plan)
        crash_point("after-manifest")
        _execute(store, plan, result)
        return result

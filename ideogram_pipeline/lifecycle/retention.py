"""Retention cleanup: delete images and records older than the policy allows.

Which records go: every id in ``generation_records`` whose ``created_at`` is older than its
retention (``RetentionPolicy.days_for`` its tags), unless it is pinned or has a keep tag.
Tags and the pin are the current row's (``generations``) while the id is current, else
the id's newest record's: a tag added after the fact (``tag ID --add keep``) counts.
An image shared with a record that stays (a linked duplicate, a reproduction: the same
``image_key``) is not deleted with the expiring record.

A run is a few steps, each one Delta commit or idempotent object deletions:

1. **Roll-up.** Each record's usage (no prompt, no URLs) is MERGEd into ``usage_rollup`` by
   id, so reports keep counting what was generated and paid for. Reports count a rolled-up
   id only once its records are gone, so no moment counts it twice.
2. **Objects.** Image objects are deleted through ``ObjectStore.delete`` in chunks of
   1,000 keys (S3's ``DeleteObjects`` limit, batched by the store). Missing objects are not
   errors.
3. **Rows.** One DELETE from ``generations`` (guarded: a row pinned or keep-tagged since
   the plan was made stays), then one from ``generation_records``. ``generations`` goes
   first because the next run chooses from ``generation_records``.
4. **Vacuum.** Delta's file cleanup removes data files that DELETEs replaced at least
   ``VACUUM_RETENTION_HOURS`` ago (a reader may still be on the version before): the
   deleted prompts are gone from every version at once, and from storage by the next run.
5. **Audit.** ``metadata/audit/cleanup/date=D/<cleanup id>.json`` (what, when, why, by
   which policy) outlives the rows.

No manifest and no lock: killed anywhere, the tables are as one commit left them. Records
not yet deleted are still expired, so the next run picks them again (their objects may be
gone already: fine); a run killed after its last DELETE and before its audit leaves
roll-up rows of ids no table holds any more, and the next run writes that audit from them.
"""

from __future__ import annotations

import getpass
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ideogram_pipeline import history
from ideogram_pipeline.history.tables import (
    GENERATIONS,
    RECORDS,
    USAGE,
    USAGE_COLUMNS,
    USAGE_SCHEMA,
    HistoryTables,
)
from ideogram_pipeline.lifecycle.policy import (
    VACUUM_RETENTION_HOURS,
    RetentionPolicy,
    prune_empty_dirs,
    put_json,
    utc_stamp,
)
from ideogram_pipeline.safe_output import sql_literal
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = [
    "AUDIT_PREFIX",
    "PHASES",
    "CleanupPlan",
    "CleanupResult",
    "plan_cleanup",
    "run_cleanup",
]

AUDIT_PREFIX = "metadata/audit/cleanup"
#: What ``run_cleanup(on_phase=...)`` is told after each step has finished.
PHASES = ("rolled-up", "objects-deleted", "generations-deleted", "records-deleted", "vacuumed")

#: Called with each finished phase (progress, or a test that kills the process there).
PhaseHook = Callable[[str], None]

# Each id once: its usage from its newest billing record (``event = 'generate'``), its tags
# and pin from the current row while it is one, else from its newest record (a tag or pin
# change appends the changed row, so the newest record carries the latest tags).
_SELECT_SQL = """
WITH candidates AS (
    SELECT r.*, coalesce(g.tags, r.newest_tags, []) AS effective_tags,
        coalesce(g.pinned, r.newest_pinned, false) AS is_pinned, g.id IS NOT NULL AS is_current
    FROM (
        SELECT *,
            first_value(tags) OVER newest AS newest_tags,
            first_value(pinned) OVER newest AS newest_pinned
        FROM generation_records WHERE created_at < $horizon
        WINDOW newest AS (PARTITION BY id ORDER BY recorded_at DESC)
        QUALIFY row_number() OVER (PARTITION BY id
            ORDER BY coalesce(event, 'generate') = 'generate' DESC, recorded_at DESC) = 1
    ) r
    LEFT JOIN (SELECT id, any_value(tags) AS tags, bool_or(pinned) AS pinned
               FROM generations GROUP BY id) g ON g.id = r.id
),
aged AS (
    SELECT *,
        CASE WHEN is_pinned OR list_has_any(effective_tags, $keep) THEN NULL
             ELSE coalesce(
                (SELECT max(p.days) FROM _policy p WHERE list_contains(effective_tags, p.tag)),
                $default_days)
        END AS retention_days
    FROM candidates
)
SELECT {columns}, image_key, is_current
FROM aged
WHERE retention_days IS NOT NULL
  AND epoch_us(created_at) < epoch_us($as_of) - CAST(retention_days * 86400e6 AS BIGINT)
ORDER BY date, batch, created_at, id
"""
_PLAN_COLUMNS = ("date", "batch", *USAGE_COLUMNS)


@dataclass
class CleanupPlan:
    """What a cleanup deletes: the records (one row per id), and the partitions they touch."""

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
    def ids(self) -> list[str]:
        return [str(record_id) for record_id in self.records.column("id").to_pylist()]

    @property
    def current(self) -> int:
        """How many of the records are current rows (in ``generations``) as planned."""
        return int(pc.sum(self.records.column("is_current")).as_py() or 0)

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
        """Partitions left empty: all their records go."""
        return sum(1 for p in self.partitions if p["expired"] == p["total"])

    def ids_by_batch(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = defaultdict(list)
        for record_id, batch in zip(
            self.ids, self.records.column("batch").to_pylist(), strict=True
        ):
            groups[str(batch)].append(record_id)
        return dict(groups)

    def by_status(self) -> dict[str, int]:
        counts = pc.value_counts(self.records.column("status"))
        statuses = counts.field("values").to_pylist()
        tallies = counts.field("counts").to_pylist()
        return {str(status): int(n or 0) for status, n in zip(statuses, tallies, strict=True)}

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
            "partitions": len(self.partitions),
            "whole_partition_drops": self.whole_partitions,
        }


@dataclass
class CleanupResult:
    """What a run did. ``resumed``: earlier cleanups, killed before their audit, whose
    audit this run wrote (a dry run: would write)."""

    plan: CleanupPlan
    dry_run: bool
    generations_deleted: int = 0
    records_deleted: int = 0
    kept_meanwhile: list[str] = field(default_factory=list)  # pinned or kept since the plan
    resumed: list[str] = field(default_factory=list)
    audit_key: str | None = None


def _default_by() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _connect(settings: Settings, store: ObjectStore) -> duckdb.DuckDBPyConnection:
    return history.connect(settings, store, views=(RECORDS, GENERATIONS, USAGE))


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
    con = _connect(settings, store)
    try:
        return _plan(con, policy, as_of, reason=reason, by=by)
    finally:
        con.close()


def _plan(
    con: duckdb.DuckDBPyConnection,
    policy: RetentionPolicy,
    as_of: datetime,
    *,
    reason: str,
    by: str,
) -> CleanupPlan:
    con.register(
        "_policy",
        pa.table(
            {
                "tag": pa.array(list(policy.tag_days), pa.string()),
                "days": pa.array(list(policy.tag_days.values()), pa.float64()),
            }
        ),
    )
    columns = ", ".join(f'"{name}"' for name in _PLAN_COLUMNS)
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
            "FROM _expired e JOIN (SELECT date, batch, count(DISTINCT id) AS total "
            "FROM generation_records WHERE (date, batch) IN (SELECT (date, batch) FROM _expired) "
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
            "SELECT DISTINCT image_key FROM (SELECT id, image_key FROM generation_records "
            "UNION ALL SELECT id, image_key FROM generations) WHERE image_key IN "
            "(SELECT image_key FROM _expired) AND id NOT IN (SELECT id FROM _expired)"
        ).fetchall()
    }
    if not shared:
        return records
    keys = [None if key in shared else key for key in records.column("image_key").to_pylist()]
    position = records.schema.get_field_index("image_key")
    return records.set_column(position, "image_key", pa.array(keys, pa.string()))


# -- steps ------------------------------------------------------------------------------


def _roll_up(tables: HistoryTables, plan: CleanupPlan) -> None:
    """MERGE each record's usage into ``usage_rollup`` by id: a re-run inserts nothing
    twice, and a row that is there already says which cleanup finally deleted it."""
    stamp = pa.array([plan.planned_at] * plan.count, pa.timestamp("us", tz="UTC"))
    source = plan.records.append_column("deleted_at", stamp).append_column(
        "cleanup_id", pa.array([plan.cleanup_id] * plan.count, pa.string())
    )
    source = source.select(USAGE_SCHEMA.names).cast(USAGE_SCHEMA)
    tables.merge_by_id(
        USAGE,
        plan.ids_by_batch(),
        source,
        lambda merger: merger.when_matched_update(
            updates={"deleted_at": "s.deleted_at", "cleanup_id": "s.cleanup_id"}
        ).when_not_matched_insert_all(),
        "num_target_rows_inserted",
        "roll-up",
    )


def _delete_objects(store: ObjectStore, keys: list[str]) -> None:
    store.delete(keys)  # the store batches (S3: 1,000 keys per DeleteObjects)
    prune_empty_dirs(store, "images")


def _unprotected(policy: RetentionPolicy) -> str:
    """A Delta predicate over ``t``: the row is neither pinned nor keep-tagged (now)."""
    keep = " OR ".join(f"array_has(t.tags, {sql_literal(tag)})" for tag in policy.keep_tags)
    guard = "t.pinned IS NOT TRUE"
    return f"{guard} AND NOT coalesce({keep}, false)" if keep else guard


def _delete_current(tables: HistoryTables, plan: CleanupPlan) -> int:
    """DELETE the plan's rows from ``generations``, except rows pinned or keep-tagged since
    the plan was read: the guard is evaluated on the version the commit is checked against,
    so a concurrent ``pin`` is never undone."""
    return tables.delete(GENERATIONS, plan.ids_by_batch(), guard=_unprotected(plan.policy))


def _still_current(settings: Settings, store: ObjectStore, ids: list[str]) -> list[str]:
    """The ids that still have a current row (the guard kept them)."""
    con = history.connect(settings, store, views=(GENERATIONS,))
    try:
        con.register("_ids", pa.table({"id": pa.array(ids, pa.string())}))
        rows = con.execute(
            "SELECT DISTINCT id FROM generations WHERE id IN (SELECT id FROM _ids)"
        ).fetchall()
    finally:
        con.close()
    return sorted(i for (i,) in rows)


def _vacuum(tables: HistoryTables, hours: int) -> None:
    for name in (GENERATIONS, RECORDS, USAGE):
        if tables.exists(name):
            tables.vacuum(name, retention_hours=hours)


# -- audits -----------------------------------------------------------------------------


def _audit_key(cleanup_id: str, moment: datetime) -> str:
    return f"{AUDIT_PREFIX}/date={moment.date().isoformat()}/{cleanup_id}.json"


def _write_audit(store: ObjectStore, plan: CleanupPlan, result: CleanupResult) -> None:
    """The record that outlives the rows: what went, when, why and by which policy."""
    now = datetime.now(UTC)
    key = _audit_key(plan.cleanup_id, now)
    audit = {
        **plan.summary(),
        "action": "delete" if plan.count else "nothing expired",
        "finished_at": now.isoformat(),
        "generations_rows_deleted": result.generations_deleted,
        "records_rows_deleted": result.records_deleted,
        "kept_meanwhile": result.kept_meanwhile,
        "resumed": result.resumed,
    }
    put_json(store, key, audit)
    result.audit_key = key


def _unaudited(con: duckdb.DuckDBPyConnection, store: ObjectStore) -> list[dict[str, Any]]:
    """Cleanups killed after their last DELETE and before their audit, from the roll-up:
    its rows of ids gone from ``generation_records``, under a cleanup id with no audit."""
    audited = [
        info.key.rsplit("/", 1)[-1].removesuffix(".json")
        for info in store.list(AUDIT_PREFIX + "/")
        if info.key.endswith(".json")
    ]
    con.register("_audited", pa.table({"cleanup_id": pa.array(audited, pa.string())}))
    rows = con.execute(
        "SELECT cleanup_id, min(deleted_at), count(*), "
        "coalesce(sum(size_bytes) FILTER (status = 'stored'), 0), min(created_at), "
        "max(created_at), count(DISTINCT (date, batch)) FROM usage_rollup "
        "WHERE cleanup_id NOT IN (SELECT cleanup_id FROM _audited) "
        "AND id NOT IN (SELECT id FROM generation_records WHERE id IS NOT NULL) "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return [
        {
            "cleanup_id": cleanup_id,
            "planned_at": planned.isoformat() if planned else None,
            "records": int(records),
            "bytes": int(size),
            "oldest": oldest.isoformat() if oldest else None,
            "newest": newest.isoformat() if newest else None,
            "partitions": int(partitions),
        }
        for cleanup_id, planned, records, size, oldest, newest, partitions in rows
    ]


def _write_recovered_audits(store: ObjectStore, found: list[dict[str, Any]], by: str) -> None:
    now = datetime.now(UTC)
    for audit in found:
        put_json(
            store,
            _audit_key(audit["cleanup_id"], now),
            {
                **audit,
                "action": "delete",
                "finished_at": now.isoformat(),
                "reason": "audit of an interrupted cleanup, from the usage roll-up",
                "by": by,
            },
        )


# -- the run ----------------------------------------------------------------------------


def run_cleanup(
    settings: Settings,
    store: ObjectStore,
    policy: RetentionPolicy,
    as_of: datetime,
    *,
    dry_run: bool = False,
    reason: str = "",
    by: str = "",
    on_phase: PhaseHook | None = None,
    vacuum_hours: int = VACUUM_RETENTION_HOURS,
) -> CleanupResult:
    """Plan and (unless ``dry_run``) carry out a cleanup.

    A dry run writes nothing at all: no table is created or changed, no audit written.
    ``on_phase`` is called with each of :data:`PHASES` as it finishes. ``vacuum_hours``:
    replaced data files younger than this stay (0 removes this run's at once, which is
    only safe when nothing else reads the tables meanwhile).
    """
    con = _connect(settings, store)
    try:
        unaudited = _unaudited(con, store)
        plan = _plan(con, policy, as_of, reason=reason, by=by)
    finally:
        con.close()
    result = CleanupResult(plan, dry_run, resumed=[a["cleanup_id"] for a in unaudited])
    if dry_run:
        return result
    _write_recovered_audits(store, unaudited, plan.by)
    tables = HistoryTables(settings)
    step = on_phase or (lambda _phase: None)
    if plan.count:
        _roll_up(tables, plan)
        step("rolled-up")
        _delete_objects(store, plan.objects)
        step("objects-deleted")
        result.generations_deleted = _delete_current(tables, plan)
        step("generations-deleted")
        gone = plan.ids_by_batch()
        if result.generations_deleted < plan.current:  # the guard kept some
            result.kept_meanwhile = _still_current(settings, store, plan.ids)
            kept = set(result.kept_meanwhile)
            gone = {b: [i for i in ids if i not in kept] for b, ids in gone.items()}
        result.records_deleted = tables.delete(RECORDS, gone)
        step("records-deleted")
    # Also after a run with nothing to delete: a killed run may have left files to remove.
    _vacuum(tables, vacuum_hours)
    step("vacuumed")
    _write_audit(store, plan, result)
    return result

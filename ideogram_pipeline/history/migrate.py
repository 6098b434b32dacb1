"""Bring a history written before the Delta tables into them: ``ideogram-pipeline migrate``.

What the old files mean is :mod:`~ideogram_pipeline.history.legacy`'s business (the old
release's read-time rules, worked out once). This module imports that answer, checks that
it arrived and records that it did:

- The old ``generation_records`` rows go to ``generation_records`` as
  ``event = 'generate'`` with ``recorded_at = created_at``; the old ``generations`` rows to
  ``generations`` (one per row key); the roll-up rows to ``usage_rollup``.

**Idempotent.** Rows are MERGEd keyed by (date, batch, id) or the row key and inserted
only when not matched, so a repeated import adds nothing and commits no table version.
Once a batch is imported and verified, a marker ``history/_migrated/<batch>.json``
records a fingerprint of its old files and the tables' ids; a later run skips a batch
whose files and tables are unchanged (so a record retention has since deleted from the
tables is not brought back). A complete run writes ``history/_migrated.json``, after which
``views.connect`` takes the tables for the history even while the old files stay.

**Verified.** Per batch, the record count and cost sum of the old views' answer are
compared with the rows found in each table (and each row's cost with its copy's) before a
batch counts as migrated; a difference is a :class:`MigrationError` naming the batch.

**Rows keyed by content.** Releases before issue 17 knew a row by its line; the rows of
``generations`` without a ``row_key`` (imported here, or written by such a release to the
tables) get the key a run computes for them (``row_key_migration.py``), so a batch run
before the upgrade is recognised after it. Also idempotent and verified.

**Old files stay** until ``remove_old``, which deletes them (and ``metadata/lifecycle/``,
the old cleanup manifests and lock) only when every batch is verified.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa

from ideogram_pipeline.history.legacy import (
    RECORD_KEYS,
    STATE_KEYS,
    USAGE_ROWS,
    LegacyFiles,
    LegacyReader,
    MigrationError,
    duckdb_types,
    list_legacy,
    quoted,
    remove_legacy,
    typed_select,
)
from ideogram_pipeline.history.row_key_migration import KeyingResult, key_rows
from ideogram_pipeline.history.schema import LEGACY_ROW_KEY, TABLE_SCHEMA
from ideogram_pipeline.history.tables import (
    GENERATIONS,
    RECORDS,
    TABLES_PREFIX,
    USAGE,
    USAGE_SCHEMA,
    HistoryTables,
    retry_commit,
)
from ideogram_pipeline.history.views import MIGRATION_COMPLETE
from ideogram_pipeline.safe_output import sql_list, sql_literal
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store
from ideogram_pipeline.storage.base import StorageError

__all__ = ["BatchOutcome", "MigrationError", "MigrationResult", "migrate"]

MARKERS_PREFIX = f"{TABLES_PREFIX}/_migrated"
#: Old files read per step: a few batches at a time keeps memory flat on big histories.
CHUNK_BYTES = 64 * 1024 * 1024


class _Part(NamedTuple):
    """What goes where: the old views' rows (a :class:`LegacyReader` temp table) and the
    history table they go to, whose rows are matched by ``keys``."""

    label: str
    temp: str
    table: str
    schema: pa.Schema
    keys: tuple[str, ...]

    def matches(self, other: str) -> str:
        """The condition that table row ``t`` is the row ``other`` (same keys)."""
        return " AND ".join(f"t.{quoted(k)} = {other}.{quoted(k)}" for k in self.keys)


_RECORDS = _Part("records", RECORD_KEYS, RECORDS, TABLE_SCHEMA, ("date", "batch", "id"))
# The old views kept one row per line: imported by it, then keyed by content (row_keys.py).
_CURRENT = _Part("current", STATE_KEYS, GENERATIONS, TABLE_SCHEMA, LEGACY_ROW_KEY)
_USAGE = _Part("usage", USAGE_ROWS, USAGE, USAGE_SCHEMA, ("date", "batch", "id"))
_TABLE_OF = {part.label: part.table for part in (_RECORDS, _CURRENT, _USAGE)}


@dataclass
class Figures:
    """A count and a cost sum: what verification compares."""

    rows: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "cost_usd": round(self.cost_usd, 6)}


@dataclass
class _Check:
    """One batch in one table: the old views' figures, what the table must hold of them
    (less rows it already holds a newer record of) and what it holds."""

    legacy: Figures
    expected: Figures
    table: Figures
    differing: int = 0  # rows whose cost differs from their copy's
    superseded: int = 0

    @property
    def missing(self) -> int:
        return self.expected.rows - self.table.rows

    @property
    def holds(self) -> bool:
        return (
            self.expected.rows == self.table.rows
            and abs(self.expected.cost_usd - self.table.cost_usd) < 1e-6
            and not self.differing
        )


@dataclass
class BatchOutcome:
    """One batch: the old views' figures, what was inserted, and how it ended."""

    batch: str
    state: str  # "migrated", "already migrated" or "dry run"
    records: Figures
    current: Figures
    usage: Figures
    inserted: dict[str, int] = field(default_factory=dict)
    superseded: int = 0  # current rows the tables already hold a newer record for


@dataclass
class MigrationResult:
    """What a run found and did, for the command's summary."""

    root: str
    dry_run: bool
    batches: list[BatchOutcome] = field(default_factory=list)
    seconds: float = 0.0
    removed: int = 0
    pending_cleanups: list[str] = field(default_factory=list)
    found_legacy: bool = False
    #: Rows of an earlier release keyed by their content (None: not looked at, a dry run
    #: of an old-layout history that is not imported yet).
    keyed: KeyingResult | None = None

    @property
    def records(self) -> int:
        return sum(b.records.rows for b in self.batches)

    @property
    def imported_records(self) -> int:
        """Records of the batches this run imported (or, dry, would import)."""
        return sum(b.records.rows for b in self.batches if b.state != "already migrated")

    @property
    def rows_per_second(self) -> float:
        return self.imported_records / self.seconds if self.seconds > 0 else 0.0


# -- the migration ------------------------------------------------------------------------


class _Migration:
    """One run: the old views' answer (a :class:`LegacyReader`) and the tables, in one
    DuckDB connection so that comparing them is a join."""

    def __init__(self, settings: Settings, store: ObjectStore, legacy: LegacyFiles) -> None:
        from ideogram_pipeline.history.duckdb_s3 import configure_duckdb_s3, load_extension

        self.tables = HistoryTables(settings)
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        load_extension(self.con, "delta")
        if settings.is_s3:
            configure_duckdb_s3(self.con, settings)
        self.old = LegacyReader(self.con, store, legacy)

    def close(self) -> None:
        self.con.close()

    # ---- writing ----

    def _absent(self, part: _Part, batches: Sequence[str]) -> str:
        """The old rows of ``part`` that its table has no row for (matched by its keys)."""
        if not self.tables.exists(part.table):
            return f"SELECT * FROM {part.temp}"
        match = part.matches("l")
        return (
            f"SELECT * FROM {part.temp} l WHERE NOT EXISTS "
            f"(SELECT 1 FROM {self._table_sql(part, batches)} t WHERE {match})"
        )

    def write(self, batches: Sequence[str]) -> int:
        """Insert the rows the tables lack (one commit per table that lacks any).

        Only rows absent from a table are read whole and sent, and the MERGE inserts them
        only when still not matched, so a repeat (or a concurrent migrate) adds nothing
        twice. Returns the rows inserted.
        """
        inserted = 0
        for part, rows in self._missing_rows(batches).items():
            if rows.num_rows:
                inserted += self._insert_missing(part, rows.cast(part.schema), batches)
        return inserted

    def _missing_rows(self, batches: Sequence[str]) -> dict[_Part, pa.Table]:
        needed = (
            f"SELECT filename, file_row_number, bool_or(rec) AS rec, bool_or(cur) AS cur FROM ("
            f"SELECT filename, file_row_number, true AS rec, false AS cur FROM "
            f"({self._absent(_RECORDS, batches)}) UNION ALL "
            f"SELECT filename, file_row_number, false, true FROM "
            f"({self._absent(_CURRENT, batches)})) GROUP BY ALL"
        )
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE _needed AS {needed}")
        out = {}
        if self.con.execute("SELECT count(*) FROM _needed").fetchone() != (0,):
            whole = self.old.rows_at("_needed")
            out[_RECORDS] = whole.filter(whole.column("rec")).select(TABLE_SCHEMA.names)
            out[_CURRENT] = whole.filter(whole.column("cur")).select(TABLE_SCHEMA.names)
        out[_USAGE] = self.con.execute(
            f"SELECT {', '.join(map(quoted, USAGE_SCHEMA.names))} FROM "
            f"({self._absent(_USAGE, batches)})"
        ).fetch_arrow_table()
        return out

    def _insert_missing(self, part: _Part, source: pa.Table, batches: Sequence[str]) -> int:
        match = part.matches("s")
        # The batch literals prune the scan to these batches' partitions.
        predicate = f"t.batch IN ({sql_list(batches)[1:-1]}) AND {match}"

        def go() -> int:
            metrics = (
                self.tables.table(part.table)
                .merge(source, predicate=predicate, source_alias="s", target_alias="t")
                .when_not_matched_insert_all()
                .execute()
            )
            return int(metrics.get("num_target_rows_inserted", 0))

        return retry_commit(go, "migrate")

    # ---- reading back ----

    def _table_sql(self, part: _Part, batches: Sequence[str]) -> str:
        """``part``'s table's rows of ``batches`` (none when the table does not exist)."""
        if not self.tables.exists(part.table):
            return f"(SELECT {typed_select((), duckdb_types(part.schema))} WHERE false)"
        uri = sql_literal(self.tables.uri(part.table))
        # Literals, so that the scan is pruned to these batches' partitions.
        return f"(SELECT * FROM delta_scan({uri}) WHERE batch IN ({sql_list(batches)[1:-1]}))"

    def compare(self, batches: Sequence[str]) -> dict[str, dict[str, _Check]]:
        """Per batch and table: the old views' figures and the rows the tables hold of them."""
        out: dict[str, dict[str, _Check]] = {b: {} for b in batches}
        for part in (_RECORDS, _USAGE):
            table = self._table_sql(part, batches)
            if part is _RECORDS:
                table = f"(SELECT * FROM {table} WHERE event = 'generate')"
            join = part.matches("l")
            rows = self.con.execute(
                f"SELECT l.batch, count(*), sum(coalesce(l.cost_usd, 0)), count(t.found), "
                "sum(coalesce(t.cost_usd, 0)), "
                "count(*) FILTER (t.found AND t.cost_usd IS DISTINCT FROM l.cost_usd) "
                f"FROM {part.temp} l LEFT JOIN (SELECT {', '.join(map(quoted, part.keys))}, "
                f"any_value(cost_usd) AS cost_usd, true AS found FROM {table} GROUP BY ALL) t "
                f"ON {join} GROUP BY l.batch"
            ).fetchall()
            for batch, n, cost, found, found_cost, differing in rows:
                legacy = Figures(n, float(cost or 0))
                check = _Check(legacy, legacy, Figures(found, float(found_cost or 0)))
                check.differing = differing
                out[batch][part.label] = check
        table = self._table_sql(_CURRENT, batches)
        join = _CURRENT.matches("l")
        rows = self.con.execute(
            "SELECT l.batch, count(*), sum(coalesce(l.cost_usd, 0)), "
            "count(*) FILTER (t.id = l.id), sum(coalesce(t.cost_usd, 0)) FILTER (t.id = l.id), "
            "count(*) FILTER (t.id = l.id AND t.cost_usd IS DISTINCT FROM l.cost_usd), "
            # A row the tables hold a newer record of (a run after a half-done migration).
            "count(*) FILTER (t.id <> l.id AND t.created_at >= l.created_at), "
            "sum(coalesce(l.cost_usd, 0)) FILTER (t.id <> l.id AND t.created_at >= l.created_at) "
            f"FROM {_CURRENT.temp} l LEFT JOIN {table} t ON {join} GROUP BY l.batch"
        ).fetchall()
        for batch, n, cost, same, same_cost, differing, newer, newer_cost in rows:
            legacy = Figures(n, float(cost or 0))
            # Rows the tables already hold a newer record of are not expected from the files.
            expected = Figures(n - newer, legacy.cost_usd - float(newer_cost or 0))
            check = _Check(legacy, expected, Figures(same, float(same_cost or 0)))
            check.differing, check.superseded = differing, newer
            out[batch][_CURRENT.label] = check
        return out


def _table_ids(tables: HistoryTables) -> dict[str, str | None]:
    """Each table's Delta id (None: no table): a marker is void once a table is replaced."""
    from deltalake import DeltaTable

    def table_id(name: str) -> str:
        return str(DeltaTable(tables.uri(name), storage_options=tables.options).metadata().id)

    return {n: table_id(n) if tables.exists(n) else None for n in (RECORDS, GENERATIONS, USAGE)}


def _verify(batch: str, checks: dict[str, _Check]) -> None:
    """Raise unless every table holds the old views' rows of ``batch`` with their costs."""
    for label, check in checks.items():
        if not check.holds:
            raise MigrationError(
                f"batch {batch}: verification failed for {_TABLE_OF[label]}: the old files hold "
                f"{check.expected.rows} rows costing ${check.expected.cost_usd:.6f}, the table "
                f"{check.table.rows} of them costing ${check.table.cost_usd:.6f}"
                + (f" ({check.differing} with a different cost)" if check.differing else "")
                + "; the old files were left in place"
            )


def _outcome(batch: str, state: str, checks: dict[str, _Check]) -> BatchOutcome:
    def legacy(label: str) -> Figures:
        return checks[label].legacy if label in checks else Figures()

    current = checks.get("current")
    return BatchOutcome(
        batch,
        state,
        legacy("records"),
        legacy("current"),
        legacy("usage"),
        superseded=current.superseded if current else 0,
    )


def _chunks(legacy: LegacyFiles, batches: Sequence[str], limit: int) -> list[list[str]]:
    """``batches`` in groups whose old files add up to about ``limit`` bytes."""
    groups: list[list[str]] = []
    size = 0
    for batch in batches:
        if not groups or size + legacy.size(batch) > limit:
            groups.append([])
            size = 0
        groups[-1].append(batch)
        size += legacy.size(batch)
    return groups


def _read_markers(store: ObjectStore) -> dict[str, dict[str, Any]]:
    markers = {}
    for info in store.list(MARKERS_PREFIX + "/"):
        if info.key.endswith(".json"):
            with_name = Path(info.key).stem
            try:
                markers[with_name] = json.loads(store.get_bytes(info.key))
            except (ValueError, StorageError):
                continue  # a damaged marker: the batch is checked again
    return markers


def _write_marker(
    store: ObjectStore, legacy: LegacyFiles, outcome: BatchOutcome, ids: dict[str, str | None]
) -> None:
    marker = {
        "batch": outcome.batch,
        "migrated_at": datetime.now(UTC).isoformat(),
        "fingerprint": legacy.fingerprint(outcome.batch),
        "table_ids": ids,
        "generation_records": outcome.records.as_dict(),
        "generations": outcome.current.as_dict(),
        "usage_rollup": outcome.usage.as_dict(),
    }
    store.put_bytes(
        f"{MARKERS_PREFIX}/{outcome.batch}.json",
        json.dumps(marker, indent=1, sort_keys=True).encode(),
        content_type="application/json",
    )


def _from_marker(batch: str, marker: dict[str, Any]) -> BatchOutcome:
    def figures(name: str) -> Figures:
        item = marker.get(name) or {}
        return Figures(int(item.get("rows", 0)), float(item.get("cost_usd", 0.0)))

    return BatchOutcome(
        batch,
        "already migrated",
        figures("generation_records"),
        figures("generations"),
        figures("usage_rollup"),
    )


def _marker_holds(
    marker: dict[str, Any] | None, fingerprint: str, ids: dict[str, str | None]
) -> bool:
    """A batch is done when its files and the tables are the ones its marker names."""
    if not marker or marker.get("fingerprint") != fingerprint:
        return False
    named = marker.get("table_ids") or {}
    return all(named.get(name) == ids.get(name) for name in named if named.get(name))


def migrate(
    settings: Settings,
    store: ObjectStore | None = None,
    *,
    dry_run: bool = False,
    remove_old: bool = False,
    progress: Callable[[BatchOutcome], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> MigrationResult:
    """Import the old-layout history under the settings' root into the tables.

    Raises :class:`MigrationError` (naming the batch) when the old files cannot be read
    or a batch does not verify; batches verified before stay migrated, and a new run
    carries on from there. ``dry_run`` reads and compares but writes nothing.
    """
    store = store or open_store(settings)
    started = time.perf_counter()
    legacy = list_legacy(store)
    result = MigrationResult(store.root, dry_run, pending_cleanups=legacy.pending_cleanups)
    result.found_legacy = not legacy.empty
    if legacy.empty:
        result.keyed = key_rows(settings, store, dry_run=dry_run)
        result.seconds = time.perf_counter() - started
        return result
    tables = HistoryTables(settings)
    ids = _table_ids(tables)
    markers = _read_markers(store)
    todo = []
    for batch in legacy.batches:
        if _marker_holds(markers.get(batch), legacy.fingerprint(batch), ids):
            outcome = _from_marker(batch, markers[batch])
            result.batches.append(outcome)
            if progress:
                progress(outcome)
        else:
            todo.append(batch)
    if todo:
        _migrate_batches(settings, store, legacy, todo, result, progress, chunk_bytes)
    if not dry_run:
        # Every batch verified: from now on the tables are the history (views.connect).
        summary = {"batches": len(result.batches), "records": result.imported_records}
        store.put_bytes(
            MIGRATION_COMPLETE, json.dumps(summary).encode(), content_type="application/json"
        )
        result.keyed = key_rows(settings, store)
    result.seconds = time.perf_counter() - started
    if remove_old and not dry_run:
        result.removed = remove_legacy(store, legacy)
    return result


def _migrate_batches(
    settings: Settings,
    store: ObjectStore,
    legacy: LegacyFiles,
    todo: Sequence[str],
    result: MigrationResult,
    progress: Callable[[BatchOutcome], None] | None,
    chunk_bytes: int,
) -> None:
    """Import, verify and mark ``todo`` a chunk of batches at a time."""
    dry_run = result.dry_run
    run = _Migration(settings, store, legacy)
    try:
        if not dry_run:
            # Both history tables exist after a migration, even of a history left with
            # only roll-ups, so no command takes the root for an unmigrated one.
            run.tables.table(RECORDS)
            run.tables.table(GENERATIONS)
        ids = _table_ids(run.tables)
        for chunk in _chunks(legacy, todo, chunk_bytes):
            run.old.load(chunk)
            before = run.compare(chunk)
            after = before
            if not dry_run and any(c.missing for b in before.values() for c in b.values()):
                run.write(chunk)
                after = run.compare(chunk)
                ids = _table_ids(run.tables)
            for batch in chunk:
                checks = after.get(batch, {})
                outcome = _outcome(batch, "dry run" if dry_run else "migrated", checks)
                outcome.inserted = {
                    _TABLE_OF[label]: n
                    for label, check in before.get(batch, {}).items()
                    if (n := check.missing - (0 if dry_run else checks[label].missing))
                }
                if not dry_run:
                    _verify(batch, checks)
                    _write_marker(store, legacy, outcome, ids)
                result.batches.append(outcome)
                if progress:
                    progress(outcome)
    finally:
        run.close()

"""The history as Delta Lake tables under the storage root, written through ``deltalake``.

Three tables, each a folder of Hive-partitioned Parquet plus a ``_delta_log``:

- ``history/generations``: the current state, exactly one row per :data:`ROW_KEY`. Every
  metadata flush MERGEs into it (a retried row replaces its earlier state); tags and pins
  are UPDATEs of it.
- ``history/generation_records``: every record ever written, append-only (the audit
  trail). A tag or pin change appends the row as it was after the change.
- ``history/usage_rollup``: what retention keeps of a deleted record for the reports.

Why Delta: each commit is atomic (a reader sees a whole flush or none of it), concurrent
writers are ordered by the log (a put that refuses to overwrite: a hard link locally,
``If-None-Match``/ETag on S3), and the folder alone is the table, so the bucket stays the
backup and any engine (DuckDB's ``delta_scan``, Spark, Polars, pandas) reads the same rows.
Conflicting commits (two writers rewriting the same files) are retried here with the
operation recomputed on the newer version, which is what makes a concurrent tag, pin,
cleanup and batch run lose no update.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import pyarrow as pa

from ideogram_pipeline.history.layout import GENERATIONS, RECORDS, TABLES_PREFIX, USAGE, table_uri
from ideogram_pipeline.history.schema import (
    METADATA_SCHEMA,
    PARTITION_COLUMNS,
    ROW_KEY,
    TABLE_SCHEMA,
    GenerationRecord,
    line_key,
    records_table,
)
from ideogram_pipeline.safe_output import sql_list, sql_literal
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage.base import ObjectStore, StorageError
from ideogram_pipeline.storage.keys import is_safe_key

__all__ = [
    "COMMIT_RETRIES",
    "GENERATIONS",
    "RECORDS",
    "TABLES_PREFIX",
    "USAGE",
    "HistoryTables",
    "delta_storage_options",
    "import_writers",
    "retry_commit",
    "table_uri",
]

#: Commits retried on a conflict before giving up (each retry recomputes on the newest version).
COMMIT_RETRIES = 12
#: Table properties: a checkpoint every 50 commits keeps reading the log a few files long;
#: old log files are removed by the lifecycle job (``vacuum``), never by a writer, so the
#: generation role needs no delete permission (deploy/iam/generation.json).
TABLE_CONFIGURATION = {
    "delta.checkpointInterval": "50",
    "delta.enableExpiredLogCleanup": "false",
}

T = TypeVar("T")


def delta_storage_options(settings: Settings) -> dict[str, str] | None:
    """``deltalake`` options for an S3 root: the same endpoint, keys and region as boto3.

    ``conditional_put = etag`` makes the commit itself the lock (an S3 put that refuses to
    replace a log entry another writer made), so no lock service is needed.
    """
    if not settings.is_s3:
        return None
    options = {"conditional_put": "etag", "AWS_REGION": settings.aws_region or "us-east-1"}
    if settings.aws_endpoint_url:
        options["AWS_ENDPOINT_URL"] = settings.aws_endpoint_url
        if settings.aws_endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    if settings.s3_sse:
        # The same encryption as every other upload (storage/s3.py), for data and log files.
        options["AWS_SERVER_SIDE_ENCRYPTION"] = settings.s3_sse
        if settings.s3_sse_kms_key_id:
            options["AWS_SSE_KMS_KEY_ID"] = settings.s3_sse_kms_key_id
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        options["AWS_ACCESS_KEY_ID"] = settings.aws_access_key_id
        options["AWS_SECRET_ACCESS_KEY"] = settings.aws_secret_access_key
    return options


def retry_commit(operation: Callable[[], T], what: str) -> T:
    """Run ``operation`` (which loads the table afresh) until its commit goes through.

    Only Delta's commit conflicts are retried, with a jittered backoff: the operation
    reads the newer version and decides again (delta-rs rebases only commits that do not
    conflict, and treats an append racing a rewrite of the same partition as a conflict).
    Everything else is raised at once. ``what`` names the operation in the final error.
    """
    from deltalake.exceptions import CommitFailedError

    for attempt in range(COMMIT_RETRIES):
        try:
            return operation()
        except CommitFailedError as exc:
            if attempt == COMMIT_RETRIES - 1:
                raise StorageError(
                    f"the history's {what} kept conflicting with other writers "
                    f"({COMMIT_RETRIES} tries): {exc}"
                ) from exc
            time.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


def _last_per_key(table: pa.Table) -> pa.Table:
    """One source row per :data:`ROW_KEY` (the last), as MERGE needs."""
    keys = list(zip(*(table.column(k).to_pylist() for k in ROW_KEY), strict=True))
    last = {key: index for index, key in enumerate(keys)}
    if len(last) == len(keys):
        return table
    return table.take(sorted(last.values()))


def _quoted(column: str) -> str:
    return f'"{column}"'


@dataclass(frozen=True)
class WriteResult:
    """What one flush committed: its records and the two table versions it made."""

    records: int
    generations_version: int
    records_version: int


def import_writers() -> None:
    """Import what the first write needs: deltalake, and pandas, which pyarrow imports the
    first time it builds an array from Python values (0.7 s, holding the GIL). A run calls
    this in a thread as it starts, while its first requests wait on Ideogram, so the import
    does not land at its first flush, mid-run, starving the event loop that keeps the
    account's slots busy."""
    import deltalake  # noqa: F401

    pa.array([0])


class HistoryTables:
    """The history tables of one storage root, for writers (readers use DuckDB: ``views.py``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.options = delta_storage_options(settings)

    @classmethod
    def for_store(cls, store: ObjectStore) -> HistoryTables:
        """The tables under a local store's root (an S3 root needs its settings)."""
        from ideogram_pipeline.storage.local import LocalStore

        if not isinstance(store, LocalStore):
            raise TypeError("the history of an S3 root needs its settings: HistoryTables(settings)")
        return cls(Settings(storage=store.root))

    def uri(self, name: str) -> str:
        return table_uri(self.settings, name)

    # -- tables ---------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.uri(name), storage_options=self.options)

    def table(self, name: str) -> Any:
        """The newest version of table ``name`` (created empty on first use)."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            table = DeltaTable(self.uri(name), storage_options=self.options)
        except TableNotFoundError:
            self._create(name)
            return DeltaTable(self.uri(name), storage_options=self.options)
        return self._evolved(name, table)

    def _evolved(self, name: str, table: Any) -> Any:
        """``table`` with every column of :data:`TABLE_SCHEMA` it lacks added (nullable).

        A table written before a column existed (issue 18's controls, issue 19's lineage;
        ``usage_rollup``'s ``operation``) gains it here, on a writer's first use, so MERGE
        and append see one schema; old rows read as null.
        """
        from deltalake import DeltaTable, Schema
        from deltalake.exceptions import CommitFailedError, DeltaError

        schema = USAGE_SCHEMA if name == USAGE else TABLE_SCHEMA
        present = set(table.schema().to_arrow().names)
        missing = [f for f in schema if f.name not in present]
        if not missing:
            return table
        # Another writer may evolve it first: the reload below sees its columns.
        with contextlib.suppress(CommitFailedError, DeltaError):
            table.alter.add_columns(Schema.from_arrow(pa.schema(missing)).fields)
        return DeltaTable(self.uri(name), storage_options=self.options)

    def _create(self, name: str) -> None:
        from deltalake import DeltaTable
        from deltalake.exceptions import CommitFailedError, DeltaError

        schema = USAGE_SCHEMA if name == USAGE else TABLE_SCHEMA
        try:
            DeltaTable.create(
                self.uri(name),
                schema=schema,
                partition_by=list(PARTITION_COLUMNS),
                mode="ignore",
                name=name,
                configuration=TABLE_CONFIGURATION,
                storage_options=self.options,
            )
        except (CommitFailedError, DeltaError) as exc:
            # Two first writers at once: the other one created it, which is what we wanted.
            if not self.exists(name):
                raise StorageError(f"cannot create the history table {name}: {exc}") from exc

    # -- writes ---------------------------------------------------------------------------

    def write(
        self,
        batch: str,
        records: Iterable[GenerationRecord],
        *,
        stale_rows: Sequence[int] = (),
    ) -> WriteResult:
        """Append ``records`` (of ``batch``) to the audit trail and MERGE them into the
        current state.

        The audit append comes first: a crash between the two commits leaves a record
        that the next run writes again (the ledger still holds its row), never a current
        state without its audit record. ``stale_rows`` are lines of rows recorded before
        that these records re-do: their rows (found by the records' row keys, wherever they
        were recorded) from an older attempt at image indexes these records do not replace
        are deleted in the same commit.
        """
        if not is_safe_key(batch):
            raise ValueError(f"unsafe batch key {batch!r}")
        # A record that names no row key (a script's or a test's) is its line's, in the file.
        records = [
            r if r.row_key else replace(r, row_key=line_key(r.row), in_file=r.in_file is not False)
            for r in records
        ]
        strays = sorted({r.batch for r in records} - {batch})
        if strays:
            raise ValueError(f"records of batch {', '.join(strays)} written as batch {batch!r}")
        table = records_table(records, datetime.now(UTC))
        if table.num_rows == 0:
            return WriteResult(0, -1, -1)
        records_version = self.append(RECORDS, table)
        generations_version = retry_commit(
            lambda: self._merge_state(batch, _last_per_key(table), stale_rows), "merge"
        )
        return WriteResult(table.num_rows, generations_version, records_version)

    def append(self, name: str, table: pa.Table) -> int:
        """Append ``table`` to table ``name``; returns the version committed."""
        from deltalake import write_deltalake

        def go() -> int:
            target = self.table(name)
            write_deltalake(target, table, mode="append", partition_by=list(PARTITION_COLUMNS))
            return int(target.version())

        return retry_commit(go, "append")

    def _merge_state(self, batch: str, source: pa.Table, stale_rows: Sequence[int]) -> int:
        target = self.table(GENERATIONS)
        match = " AND ".join(f"t.{_quoted(k)} = s.{_quoted(k)}" for k in ROW_KEY)
        updates = {_quoted(c): f"s.{_quoted(c)}" for c in TABLE_SCHEMA.names}
        # The same image written again (finished from the ledger after a storage failure)
        # keeps what a person did to it meanwhile.
        for column in ("tags", "pinned"):
            updates[column] = f"CASE WHEN t.id = s.id THEN t.{column} ELSE s.{column} END"
        merger = target.merge(
            source,
            # The batch literal prunes the scan to this batch's partitions.
            predicate=f"t.batch = {sql_literal(batch)} AND {match}",
            source_alias="s",
            target_alias="t",
        )
        # An older attempt never replaces a newer one (a late writer loses).
        merger = merger.when_matched_update(
            updates=updates, predicate="s.attempt_id >= t.attempt_id"
        )
        merger = merger.when_not_matched_insert_all()
        if stale_rows:
            # Rows are matched by their key, not their line (a row may have moved).
            attempts: dict[str, str] = {}
            for row, key, attempt in zip(
                source.column("row").to_pylist(),
                source.column("row_key").to_pylist(),
                source.column("attempt_id").to_pylist(),
                strict=True,
            ):
                if row is not None and row in stale_rows and key and attempt:
                    attempts[key] = min(attempts.get(key, attempt), attempt)
            if attempts:
                older = " OR ".join(
                    f"(t.row_key = {sql_literal(key)} AND t.attempt_id < {sql_literal(attempt)})"
                    for key, attempt in sorted(attempts.items())
                )
                merger = merger.when_not_matched_by_source_delete(
                    predicate=f"t.batch = {sql_literal(batch)} AND ({older})"
                )
        merger.execute()
        return int(target.version())

    def change(
        self,
        ids_by_batch: Mapping[str, Sequence[str]],
        *,
        event: str,
        updates: Mapping[str, str],
        source: pa.Table | None = None,
    ) -> int:
        """UPDATE rows of ``generations`` by id (``updates``: column -> SQL over ``t`` and
        ``s``, the source table of ``id`` plus any columns ``source`` adds), then append the
        changed rows to the audit trail as ``event``. Returns the rows changed.

        Computing the new value inside the MERGE (``t.tags`` as it is in the version the
        commit is checked against) is what keeps two concurrent changes from losing one.
        """
        ids = sorted({i for group in ids_by_batch.values() for i in group})
        if not ids:
            return 0
        changed = self.merge_by_id(
            GENERATIONS,
            ids_by_batch,
            source,
            lambda merger: merger.when_matched_update(updates=dict(updates)),
            "num_target_rows_updated",
            event,
        )
        from ideogram_pipeline.history.views import read_rows

        rows = read_rows(self.settings, GENERATIONS, ids, sorted(ids_by_batch))
        if rows.num_rows:
            now = pa.array([datetime.now(UTC)] * rows.num_rows, pa.timestamp("us", tz="UTC"))
            rows = rows.set_column(
                rows.schema.get_field_index("event"),
                "event",
                pa.array([event] * rows.num_rows, pa.string()),
            )
            rows = rows.set_column(rows.schema.get_field_index("recorded_at"), "recorded_at", now)
            self.append(RECORDS, rows.select(TABLE_SCHEMA.names).cast(TABLE_SCHEMA))
        return changed

    def delete(
        self, name: str, ids_by_batch: Mapping[str, Sequence[str]], *, guard: str | None = None
    ) -> int:
        """DELETE the rows with these ids from table ``name``; returns the rows deleted.

        ``guard`` (a predicate over ``t``) is evaluated on the version the commit is checked
        against: a row that stopped matching it meanwhile (pinned by someone) stays.
        """
        return self.merge_by_id(
            name,
            ids_by_batch,
            None,
            lambda merger: merger.when_matched_delete(predicate=guard),
            "num_target_rows_deleted",
            "delete",
        )

    def merge_by_id(
        self,
        name: str,
        ids_by_batch: Mapping[str, Sequence[str]],
        source: pa.Table | None,
        clause: Callable[[Any], Any],
        metric: str,
        what: str,
    ) -> int:
        """One MERGE of table ``name`` on ``id`` (``source``: the ids, by default), pruned
        to the ids' batches, with ``clause`` as its action; returns the ``metric`` count."""
        ids = sorted({i for group in ids_by_batch.values() for i in group})
        if not ids:
            return 0
        src = source if source is not None else pa.table({"id": pa.array(ids, pa.string())})
        batches = sql_list(sorted(ids_by_batch))[1:-1]

        def go() -> int:
            merger = self.table(name).merge(
                src,
                predicate=f"t.batch IN ({batches}) AND t.id = s.id",
                source_alias="s",
                target_alias="t",
            )
            return int(clause(merger).execute().get(metric, 0))

        return retry_commit(go, what)

    # -- maintenance ----------------------------------------------------------------------

    def compact(self, name: str, target_size: int | None = None) -> dict[str, Any]:
        """Delta's own compaction (``OPTIMIZE``): small files of a partition become one."""
        return retry_commit(
            lambda: self.table(name).optimize.compact(target_size=target_size), "compact"
        )

    def vacuum(self, name: str, *, retention_hours: float = 1) -> list[str]:
        """Delete data files that no version of the last ``retention_hours`` refers to
        (after DELETE or OPTIMIZE), then log entries past the table's log retention.

        The hour is for readers: a query that started on the version before a compaction
        still opens that version's files. 0 removes them at once (tests, and a root no one
        is reading).
        """
        table = self.table(name)
        removed = table.vacuum(
            retention_hours=int(retention_hours),
            enforce_retention_duration=False,
            dry_run=False,
        )
        table.cleanup_metadata()
        return list(removed)


#: What a deleted record leaves behind for reports: usage, never prompt text or URLs. Its
#: ``operation`` and ``derived_from`` (an id) keep the cost by operation and the lineage
#: (a deleted ancestor shown as deleted) after the record is gone.
USAGE_COLUMNS = (
    "id",
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
    "operation",
    "derived_from",
)
USAGE_SCHEMA = pa.schema(
    [METADATA_SCHEMA.field(name) for name in USAGE_COLUMNS]
    + [
        pa.field("deleted_at", pa.timestamp("us", tz="UTC")),
        pa.field("cleanup_id", pa.string()),
        pa.field("date", pa.date32()),
        pa.field("batch", pa.string()),
    ]
)

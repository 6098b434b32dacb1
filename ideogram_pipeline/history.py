"""The generation history as SQL: a DuckDB connection with a ``generations`` view.

Two views, because a batch can be re-run:

- ``generation_records``: every metadata row ever written, one per image or rejected/failed
  row per run (the audit trail).
- ``generations``: the current state, i.e. for each (batch, row) only the records of the
  latest attempt at that row (attempt ids sort by time; see ``ledger.py``). A row that
  failed yesterday and was stored today shows once, as stored; a row that a re-run skipped
  keeps the records of the attempt that did it, and an attempt finished by a later run
  after a crash shows all its images together.
"""

from __future__ import annotations

import functools
from typing import Any

import duckdb
import pyarrow as pa

from ideogram_pipeline.history_index import hidden_rows, metadata_files, read_sql
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX, METADATA_SCHEMA
from ideogram_pipeline.tag_log import tag_log_sql

__all__ = ["batch_state", "connect", "view_sql"]

_HIVE_TYPES = "{'date': DATE, 'batch': VARCHAR}"


def _parquet_glob(store: ObjectStore) -> str:
    return store.uri(f"{GENERATIONS_PREFIX}/**/*.parquet")


def _has_metadata(store: ObjectStore) -> bool:
    return any(info.key.endswith(".parquet") for info in store.list(GENERATIONS_PREFIX + "/"))


@functools.cache
def _schema_nulls_sql() -> str:
    """A typed, empty SELECT of every metadata column (types as DuckDB reads the schema)."""
    con = duckdb.connect(":memory:")
    try:
        con.register("_schema", pa.Table.from_pylist([], schema=METADATA_SCHEMA))
        described = con.execute("DESCRIBE _schema").fetchall()
    finally:
        con.close()
    nulls = ", ".join(f'CAST(NULL AS {kind}) AS "{name}"' for name, kind, *_ in described)
    return f"SELECT * FROM (SELECT {nulls}) WHERE false"


def _with_all_columns(records_sql: str) -> str:
    """``records_sql`` with every metadata column, NULL where older files lack it."""
    return f"SELECT * FROM ({records_sql}) UNION ALL BY NAME {_schema_nulls_sql()}"


def view_sql(store: ObjectStore) -> str:
    """The view definitions over ``store``'s metadata, as plain SQL anyone can paste."""
    glob = _parquet_glob(store).replace("'", "''")
    records = (
        "SELECT * FROM read_parquet("
        f"'{glob}', hive_partitioning = true, union_by_name = true, "
        f"hive_types = {_HIVE_TYPES}) "
        # Compaction and cleanup write a file's replacement before deleting it; for that
        # moment a row is in two files. One copy per id, partitioned by the Hive keys so
        # filters on date/batch still prune (ideogram_pipeline.compaction explains).
        "QUALIFY row_number() OVER (PARTITION BY date, batch, id ORDER BY created_at DESC) = 1"
    )
    # Every schema column exists even before any file has it, and `tags` merges the
    # tag-change log (tag_log.py): the views are the one source of a record's tags.
    tag_views, records = tag_log_sql(store, _with_all_columns(records))
    return (
        tag_views + f"CREATE OR REPLACE VIEW generation_records AS {records};\n"
        "CREATE OR REPLACE VIEW generations AS SELECT * FROM (SELECT * FROM generation_records "
        'QUALIFY attempt_id = max(attempt_id) OVER (PARTITION BY batch, "row")) '
        # The newest record of an image: a storage failure later finished from the ledger.
        # Ids embed the batch key, so partitioning by batch too changes nothing and lets
        # batch filters prune.
        "QUALIFY row_number() OVER (PARTITION BY batch, id ORDER BY created_at DESC) = 1;\n"
    )


def _snapshot_view_sql(store: ObjectStore, files: list[str], hide: str | None) -> str:
    """The views over exactly ``files`` with the rows listed in ``_history_hidden`` left out:
    the same rows as :func:`view_sql` without a window function per query
    (``history_index.py`` explains). ``hide`` is the anti-join's subquery, or ``None``."""

    def base(hidden: str | None) -> str:
        raw = f"{read_sql(files)} AS r"
        if hidden is not None:
            raw += f" ANTI JOIN ({hidden}) AS h USING (filename, file_row_number)"
        return _with_all_columns(f"SELECT r.* EXCLUDE (filename, file_row_number) FROM {raw}")

    records_hidden = None
    if hide is not None:
        records_hidden = f"{hide} WHERE NOT generations_only"
    tag_views, records = tag_log_sql(store, base(records_hidden))
    _views, current = tag_log_sql(store, base(hide))
    return (
        tag_views + f"CREATE OR REPLACE VIEW generation_records AS {records};\n"
        f"CREATE OR REPLACE VIEW generations AS {current};\n"
    )


def _empty_view_sql(con: duckdb.DuckDBPyConnection) -> None:
    """Views with the right columns and no rows, so queries on a new root still work."""
    empty = pa.Table.from_pylist([], schema=METADATA_SCHEMA)
    empty = empty.append_column("date", pa.array([], pa.date32()))
    empty = empty.append_column("batch", pa.array([], pa.string()))
    con.register("_empty_generations", empty)
    con.execute("CREATE OR REPLACE VIEW generation_records AS SELECT * FROM _empty_generations")
    con.execute("CREATE OR REPLACE VIEW generations AS SELECT * FROM generation_records")


def connect(settings: Settings, store: ObjectStore | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the history views over the storage root."""
    store = store or open_store(settings)
    con = duckdb.connect(":memory:")
    # Footers are read once per connection, not once for binding and again per query.
    con.execute("SET parquet_metadata_cache = true")
    if settings.is_s3:
        from ideogram_pipeline.storage.duckdb_s3 import configure_duckdb_s3

        configure_duckdb_s3(con, settings)
    files = metadata_files(store)
    if not files:
        _empty_view_sql(con)
        return con
    # A snapshot of the files listed now, with the rows the views hide computed once per
    # change of a batch's files and cached (history_index.py), instead of window functions.
    hidden = hidden_rows(con, store, files)
    hide = None
    if hidden.num_rows:
        con.register("_history_hidden_rows", hidden)
        con.execute("CREATE TEMP TABLE _history_hidden AS SELECT * FROM _history_hidden_rows")
        con.unregister("_history_hidden_rows")
        hide = "SELECT filename, file_row_number FROM _history_hidden"
    con.execute(_snapshot_view_sql(store, [store.uri(info.key) for info in files], hide))
    return con


def batch_state(settings: Settings, store: ObjectStore, batch: str) -> dict[int, dict[str, Any]]:
    """For each row of ``batch``: its request hash, statuses and last error, as now recorded.

    The engine uses this to skip rows already paid for (``stored`` or ``unsafe``).
    """
    if not _has_metadata(store):
        return {}
    con = connect(settings, store)
    try:
        rows = con.execute(
            'SELECT "row", any_value(request_hash), list(DISTINCT status), any_value(error), '
            "any_value(attempt_id), "
            # An image whose storage failed is still to be finished from the ledger.
            "list(DISTINCT image_index) FILTER (coalesce(failure_kind, '') <> 'storage') "
            'FROM generations WHERE batch = ? GROUP BY "row"',
            [batch],
        ).fetchall()
    finally:
        con.close()
    return {
        row: {
            "request_hash": request_hash,
            "statuses": set(statuses),
            "error": error,
            "attempt_id": attempt_id,
            "indexes": set(indexes),
        }
        for row, request_hash, statuses, error, attempt_id, indexes in rows
    }

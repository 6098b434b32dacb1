"""The generation history as SQL: a DuckDB connection with a ``generations`` view.

Two views, because a batch can be re-run:

- ``generation_records``: every metadata row ever written, one per image or rejected/failed
  row per run (the audit trail).
- ``generations``: the current state, i.e. for each (batch, row) only the records of the
  latest run that touched that row. A row that failed yesterday and was stored today shows
  once, as stored; a row that a re-run skipped keeps the records of the run that did it.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX, METADATA_SCHEMA

__all__ = ["batch_state", "connect", "view_sql"]

_HIVE_TYPES = "{'date': DATE, 'batch': VARCHAR}"


def _parquet_glob(store: ObjectStore) -> str:
    return store.uri(f"{GENERATIONS_PREFIX}/**/*.parquet")


def _has_metadata(store: ObjectStore) -> bool:
    return any(info.key.endswith(".parquet") for info in store.list(GENERATIONS_PREFIX + "/"))


def view_sql(store: ObjectStore) -> str:
    """The view definitions over ``store``'s metadata, as plain SQL anyone can paste."""
    glob = _parquet_glob(store).replace("'", "''")
    return (
        "CREATE OR REPLACE VIEW generation_records AS SELECT * FROM read_parquet("
        f"'{glob}', hive_partitioning = true, union_by_name = true, "
        f"hive_types = {_HIVE_TYPES});\n"
        "CREATE OR REPLACE VIEW generations AS SELECT * FROM generation_records "
        'QUALIFY run_started_at = max(run_started_at) OVER (PARTITION BY batch, "row");\n'
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
    if settings.is_s3:
        from ideogram_pipeline.storage.duckdb_s3 import configure_duckdb_s3

        configure_duckdb_s3(con, settings)
    if _has_metadata(store):
        con.execute(view_sql(store))
    else:
        _empty_view_sql(con)
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
            'SELECT "row", any_value(request_hash), list(DISTINCT status), any_value(error) '
            'FROM generations WHERE batch = ? GROUP BY "row"',
            [batch],
        ).fetchall()
    finally:
        con.close()
    return {
        row: {"request_hash": request_hash, "statuses": set(statuses), "error": error}
        for row, request_hash, statuses, error in rows
    }

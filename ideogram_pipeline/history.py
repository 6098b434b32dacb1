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
from collections.abc import Collection
from typing import Any

import duckdb
import pyarrow as pa

from ideogram_pipeline.history_index import (
    HIDDEN_TABLE,
    HIVE_TYPES,
    load_hidden_rows,
    metadata_files,
    read_sql,
    same_schema,
)
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store
from ideogram_pipeline.storage.base import ObjectInfo
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX, METADATA_SCHEMA
from ideogram_pipeline.tag_log import merged_tags_sql, tag_changes_view_sql, tag_log_sql

__all__ = ["VIEWS", "batch_state", "connect", "view_sql"]

#: The history views a connection can have (``connect(views=...)`` picks some).
VIEWS = ("generation_records", "generations")


def _parquet_glob(store: ObjectStore) -> str:
    return store.uri(f"{GENERATIONS_PREFIX}/**/*.parquet")


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
        f"hive_types = {HIVE_TYPES}) "
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


def _scan_sql(
    con: duckdb.DuckDBPyConnection,
    uris: list[str],
    *,
    name: str,
    hidden_where: str | None,
    uniform: bool,
) -> str:
    """The records of exactly ``uris`` (read in that order) without the hidden rows that
    ``hidden_where`` picks from :data:`HIDDEN_TABLE` (``None``: hide nothing).

    Only files that hold a hidden row go through the anti-join (their rows copied to the
    temp table ``name``, numbered by position among those files); the others are read
    plainly, so the join costs in proportion to the files that need it.
    """
    if hidden_where is None:
        return f"SELECT * FROM {read_sql(uris, same_schema=uniform)}"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT file_index AS listed, "
        # UBIGINT, as DuckDB's file_index: mixed types would make the join cast every key.
        "(dense_rank() OVER (ORDER BY file_index) - 1)::UBIGINT AS file_index, "
        f"file_row_number FROM {HIDDEN_TABLE} WHERE {hidden_where}"
    )
    dirty = [
        row[0] for row in con.execute(f"SELECT DISTINCT listed FROM {name} ORDER BY 1").fetchall()
    ]
    if not dirty:
        return f"SELECT * FROM {read_sql(uris, same_schema=uniform)}"
    dirty_set = set(dirty)
    clean_uris = [uri for index, uri in enumerate(uris) if index not in dirty_set]
    body = (
        f"SELECT r.* FROM {read_sql([uris[i] for i in dirty], same_schema=uniform)} AS r "
        f"ANTI JOIN {name} USING (file_index, file_row_number)"
    )
    if not clean_uris:
        return body
    union = "UNION ALL" if uniform else "UNION ALL BY NAME"
    return f"SELECT * FROM {read_sql(clean_uris, same_schema=uniform)} {union} {body}"


def _snapshot_views(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    files: list[ObjectInfo],
    views: Collection[str],
) -> None:
    """Create ``views`` over exactly ``files``: the same rows as :func:`view_sql` without a
    window function per query (``history_index.py`` explains)."""
    uris = [store.uri(info.key) for info in files]
    hidden = load_hidden_rows(con, store, files, uris)
    uniform, complete = same_schema(con, store, files, METADATA_SCHEMA.names)
    statements, has_log = tag_changes_view_sql(store)
    for name in views:
        where = None
        if hidden:  # generation_records keeps older attempts: it only hides copies
            where = "NOT generations_only" if name == "generation_records" else "true"
        records = _scan_sql(con, uris, name=f"_hidden_{name}", hidden_where=where, uniform=uniform)
        # Adding missing columns costs a tenth of a scan: only when some file lacks some.
        if not (uniform and complete):
            records = _with_all_columns(records)
        if has_log:
            records = merged_tags_sql(records)
        statements += f"CREATE OR REPLACE VIEW {name} AS {records};\n"
    con.execute(statements)


def _empty_view_sql(con: duckdb.DuckDBPyConnection) -> None:
    """Views with the right columns and no rows, so queries on a new root still work."""
    empty = pa.Table.from_pylist([], schema=METADATA_SCHEMA)
    empty = empty.append_column("date", pa.array([], pa.date32()))
    empty = empty.append_column("batch", pa.array([], pa.string()))
    con.register("_empty_generations", empty)
    con.execute("CREATE OR REPLACE VIEW generation_records AS SELECT * FROM _empty_generations")
    con.execute("CREATE OR REPLACE VIEW generations AS SELECT * FROM generation_records")


def connect(
    settings: Settings,
    store: ObjectStore | None = None,
    *,
    views: Collection[str] = VIEWS,
    one_query: bool = False,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the history views over the storage root.

    ``views`` (a subset of :data:`VIEWS`) leaves out views a caller will not use: binding
    one over a few thousand files is a good part of a short query's time. ``one_query``
    says the connection answers a single query, so caching Parquet footers for later
    queries (which costs the first one about a tenth) is not worth it.
    """
    store = store or open_store(settings)
    con = duckdb.connect(":memory:")
    if not one_query:
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
    _snapshot_views(con, store, files, [name for name in VIEWS if name in views])
    return con


def batch_state(settings: Settings, store: ObjectStore, batch: str) -> dict[int, dict[str, Any]]:
    """For each row of ``batch``: its request hash, statuses and last error, as now recorded.

    The engine uses this to skip rows already paid for (``stored`` or ``unsafe``).
    """
    # One listing (connect's): an empty root gets empty views and answers no rows.
    con = connect(settings, store, views=("generations",), one_query=True)
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

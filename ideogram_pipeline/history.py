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

from ideogram_pipeline.history_index import HIVE_TYPES, metadata_files, read_sql
from ideogram_pipeline.history_plan import hidden_table, plan_views
from ideogram_pipeline.safe_output import sql_literal
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


class _FileLists:
    """The file lists the views read, kept in DuckDB variables when that is safe.

    DuckDB binds a view's query when the view is created and again in each query that uses
    it; over a few thousand files a bind (every path parsed for its Hive keys and checked)
    costs a tenth of a count by model and day. When every file has the same columns, a
    view is created over a variable holding one file, and the variable then given the
    whole list: each query's bind reads the variable and sees every file, and the columns
    it binds cannot differ from the view's. Otherwise (or for a path holding a newline,
    which separates the paths) the lists are written into the views.
    """

    def __init__(self, uniform: bool, uris: list[str]) -> None:
        self.in_variables = uniform and not any("\n" in uri for uri in uris)
        self.uniform = uniform
        self.lists: dict[str, list[str]] = {}

    def read_sql(self, name: str, uris: list[str]) -> str:
        """``read_parquet`` over ``uris``, through the variable ``name`` if in variables."""
        if not self.in_variables:
            return read_sql(uris, same_schema=self.uniform)
        self.lists[name] = uris
        return read_sql(f"getvariable('{name}')", same_schema=True)

    def placeholders_sql(self) -> str:
        """Before the views are created: each variable holds its list's first file."""
        first = {name: sql_literal(uris[0]) for name, uris in self.lists.items()}
        return "".join(f"SET VARIABLE {name} = [{uri}];\n" for name, uri in first.items())

    def lists_sql(self) -> str:
        """Once they are: each variable holds its whole list (one string, split by DuckDB,
        which parses far faster than a list of thousands of literals)."""
        return "".join(
            f"SET VARIABLE {name} = string_split({sql_literal(chr(10).join(uris))}, chr(10));\n"
            for name, uris in self.lists.items()
        )


def _scan_sql(
    uris: list[str], dirty: list[int], *, view: str, hidden: str, files: _FileLists
) -> str:
    """The records of exactly ``uris`` (read in that order) without the rows listed in the
    temp table ``hidden``, which fall in the files at positions ``dirty``.

    Only those files go through the anti-join; the others are read plainly, so the join
    costs in proportion to the files that need it.
    """
    if not dirty:
        return f"SELECT * FROM {files.read_sql(f'_history_{view}_files', uris)}"
    dirty_set = set(dirty)
    clean_uris = [uri for index, uri in enumerate(uris) if index not in dirty_set]
    dirty_files = files.read_sql(f"_history_{view}_dirty", [uris[i] for i in dirty])
    body = (
        f"SELECT r.* FROM {dirty_files} AS r ANTI JOIN {hidden} USING (file_index, file_row_number)"
    )
    if not clean_uris:
        return body
    union = "UNION ALL" if files.uniform else "UNION ALL BY NAME"
    clean_files = files.read_sql(f"_history_{view}_clean", clean_uris)
    return f"SELECT * FROM {clean_files} {union} {body}"


def _snapshot_views(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    files: list[ObjectInfo],
    views: Collection[str],
) -> None:
    """Create ``views`` over exactly ``files``: the same rows as :func:`view_sql` without a
    window function per query (``history_index.py`` and ``history_plan.py`` explain)."""
    uris = [store.uri(info.key) for info in files]
    plan = plan_views(con, store, files, uris, views)
    lists = _FileLists(plan.uniform, uris)
    statements, has_log = tag_changes_view_sql(store)
    for name in views:
        records = _scan_sql(
            uris, plan.dirty.get(name, []), view=name, hidden=hidden_table(name), files=lists
        )
        # Adding missing columns costs a tenth of a scan: only when some file lacks some.
        if not (plan.uniform and plan.complete):
            records = _with_all_columns(records)
        if has_log:
            records = merged_tags_sql(records)
        statements += f"CREATE OR REPLACE VIEW {name} AS {records};\n"
    con.execute(lists.placeholders_sql() + statements + lists.lists_sql())


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

    The views are tied to this connection: they read temp tables and variables of its
    own, so query them through it (a ``cursor()`` of it sees the views but not those).
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

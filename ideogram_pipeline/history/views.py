"""The generation history as SQL: DuckDB views over the Delta tables.

- ``generations``: the current state, one row per batch row and image index (a row that
  failed yesterday and was stored today shows once, as stored; tags and pins as they are).
- ``generation_records``: every record ever written, the audit trail.
- ``generations_all``: ``generations`` with the rows that left their batch's latest file
  (``in_file`` false: a row deleted or changed in the file keeps its paid images). For
  people (``query``, ``search``, ``export``) ``generations`` holds only the rows of each
  batch's latest file; code that must see every image (retention, orphans, pins, reports)
  connects with ``file_rows_only=False`` (the default), where both names are the table.

Each table is one Delta table attached read-only (``ATTACH '<folder>' AS generations_all
(TYPE delta)``; ``generations`` is a view over it), the same rows a plain client gets from
``delta_scan`` over the folder
(:func:`plain_sql`): the tables hold the current state themselves, so there is nothing to
work out at read time and every client gets the same answer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import duckdb

from ideogram_pipeline.history.layout import (
    GENERATIONS,
    GENERATIONS_ALL,
    RECORDS,
    TABLES_PREFIX,
    USAGE,
    table_uri,
)
from ideogram_pipeline.safe_output import sql_list, sql_literal
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store
from ideogram_pipeline.storage.base import StorageError

if TYPE_CHECKING:
    import pyarrow as pa

    from ideogram_pipeline.history.schema import RowState

__all__ = [
    "LEGACY_PREFIX",
    "VIEWS",
    "HistoryNeedsMigration",
    "batch_state",
    "connect",
    "duckdb_type",
    "plain_sql",
    "read_rows",
    "table_exists",
]

#: The history views a connection can have (``connect(views=...)`` picks some).
VIEWS = (RECORDS, GENERATIONS, GENERATIONS_ALL)
#: What ``generations`` shows people: the rows of each batch's latest file.
IN_FILE = "in_file IS NOT FALSE"
#: Where releases before the Delta tables wrote the history (append-only Parquet).
LEGACY_PREFIX = "metadata/generations"
#: Written by ``migrate`` once every old-layout batch is in the tables and verified.
MIGRATION_COMPLETE = f"{TABLES_PREFIX}/_migrated.json"


class HistoryNeedsMigration(StorageError):
    """The root holds a history in the old layout and no tables: ``migrate`` first."""


def table_exists(store: ObjectStore, name: str) -> bool:
    """Whether table ``name`` has a log (one listing call, stopped at the first entry)."""
    return next(iter(store.list(f"{TABLES_PREFIX}/{name}/_delta_log/")), None) is not None


def has_legacy_history(store: ObjectStore) -> bool:
    return any(info.key.endswith(".parquet") for info in store.list(LEGACY_PREFIX + "/"))


def needs_migration(store: ObjectStore) -> bool:
    """Old-layout files that no complete ``migrate`` run has verified (one listing call on
    a root without them; a head request more on a root that keeps them after migrating)."""
    return has_legacy_history(store) and store.head(MIGRATION_COMPLETE) is None


def plain_sql(settings: Settings, name: str) -> str:
    """The statement any DuckDB client runs to read view ``name`` (``delta`` loaded)."""
    if name == GENERATIONS_ALL:
        return plain_sql(settings, GENERATIONS)
    return f"SELECT * FROM delta_scan({sql_literal(table_uri(settings, name))})"


def duckdb_type(kind: pa.DataType) -> str:
    """The DuckDB type of an Arrow type of the tables' schemas (for typed SQL without
    registering Arrow tables: empty views here, old files cast to the schema in ``legacy``)."""
    import pyarrow as pa

    if pa.types.is_list(kind):
        return duckdb_type(kind.value_type) + "[]"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ" if kind.tz else "TIMESTAMP"
    names = {
        pa.string(): "VARCHAR",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
        pa.date32(): "DATE",
    }
    if kind not in names:
        raise TypeError(f"no DuckDB type for {kind}")  # a new column type: map it here
    return names[kind]


def _empty_sql(name: str) -> str:
    """A typed SELECT of no rows, for a root that has no history yet.

    Plain SQL rather than a registered Arrow table: registering one imports pandas, which
    would cost a short ``query`` half a second.
    """
    from ideogram_pipeline.history.schema import TABLE_SCHEMA
    from ideogram_pipeline.history.tables import USAGE_SCHEMA

    schema = USAGE_SCHEMA if name == USAGE else TABLE_SCHEMA
    nulls = ", ".join(f'NULL::{duckdb_type(f.type)} AS "{f.name}"' for f in schema)
    return f"SELECT {nulls} WHERE false"


def connect(
    settings: Settings,
    store: ObjectStore | None = None,
    *,
    views: Collection[str] = VIEWS,
    file_rows_only: bool = False,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the history views over the storage root.

    ``views`` names the views to create (:data:`VIEWS`, and ``usage_rollup`` for reports).
    ``file_rows_only``: ``generations`` shows only the rows of each batch's latest file
    (what people query); otherwise it is the whole table, like ``generations_all``.

    Raises :class:`HistoryNeedsMigration` when the root holds only an old-layout history:
    an empty answer there would be wrong, not merely empty.
    """
    from ideogram_pipeline.history.duckdb_s3 import configure_duckdb_s3, load_extension

    store = store or open_store(settings)
    # The delta extension is the file pip installed with the venv, as trusted as this code:
    # checking its signature would hash 82 MB in every process (half of a short query).
    # User SQL still cannot LOAD anything (query_sandbox refuses it and locks the config).
    con = duckdb.connect(":memory:", config={"allow_unsigned_extensions": True})
    try:
        load_extension(con, "delta")
        if settings.is_s3:
            configure_duckdb_s3(con, settings)
        if needs_migration(store):
            raise HistoryNeedsMigration(
                f"the history under {store.root} is in the old layout ({LEGACY_PREFIX}/), "
                "not yet (or not completely) migrated: run `ideogram-pipeline migrate` to "
                "move it into the tables"
            )
        wanted = set(views)
        if GENERATIONS_ALL in wanted:
            wanted.add(GENERATIONS)
        for name in sorted(wanted - {GENERATIONS_ALL}):
            if not table_exists(store, name):
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {_empty_sql(name)}")
            elif name == GENERATIONS:
                _attach_generations(con, settings, file_rows_only=file_rows_only)
            else:
                # Attached rather than a view over delta_scan: DuckDB pushes filters
                # (a prompt regex, an id) into an attached table's scan.
                uri = sql_literal(table_uri(settings, name))
                con.execute(f"ATTACH {uri} AS {name} (TYPE delta)")
                _add_missing_columns(con, name, uri)
        if GENERATIONS in wanted and not table_exists(store, GENERATIONS):
            con.execute(f"CREATE OR REPLACE VIEW {GENERATIONS_ALL} AS SELECT * FROM {GENERATIONS}")
    except BaseException:
        con.close()
        raise
    return con


def _add_missing_columns(con: duckdb.DuckDBPyConnection, name: str, uri: str) -> None:
    """A table written before a column existed (issue 17's ``row_key`` and ``in_file``
    until ``migrate``; issue 18's controls and 19's lineage until its next write) lacks it:
    reattach it under another name behind a view that adds such columns as nulls, so
    queries that name them read (nulls, as for a row written before them) instead of
    failing."""
    from ideogram_pipeline.history.schema import TABLE_SCHEMA
    from ideogram_pipeline.history.tables import USAGE_SCHEMA

    schema = USAGE_SCHEMA if name == USAGE else TABLE_SCHEMA
    names = {d[0] for d in con.execute(f"SELECT * FROM {name} LIMIT 0").description or ()}
    missing = [f'NULL::{duckdb_type(f.type)} AS "{f.name}"' for f in schema if f.name not in names]
    if not missing:
        return
    con.execute(f"DETACH {name}")
    con.execute(f"ATTACH {uri} AS _{name} (TYPE delta)")
    con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT *, {', '.join(missing)} FROM _{name}")


def _attach_generations(
    con: duckdb.DuckDBPyConnection, settings: Settings, *, file_rows_only: bool
) -> None:
    """``generations_all`` is the table; ``generations`` the same, or (``file_rows_only``)
    only the rows of each batch's latest file. Filters still reach the table's scan: DuckDB
    inlines a view, so a predicate on it is pushed through like one on the table."""
    uri = sql_literal(table_uri(settings, GENERATIONS))
    con.execute(f"ATTACH {uri} AS {GENERATIONS_ALL} (TYPE delta)")
    _add_missing_columns(con, GENERATIONS_ALL, uri)
    where = f" WHERE {IN_FILE}" if file_rows_only else ""
    con.execute(f"CREATE OR REPLACE VIEW {GENERATIONS} AS SELECT * FROM {GENERATIONS_ALL}{where}")


def read_rows(
    settings: Settings, name: str, ids: Sequence[str], batches: Sequence[str] = ()
) -> pa.Table:
    """The rows of table ``name`` with these ids, in the tables' schema (writers use it).

    ``batches``, when the caller knows them, prunes the scan to those partitions (at a
    million records: 50 ms instead of 2 s).
    """
    import pyarrow as pa

    from ideogram_pipeline.history.schema import TABLE_SCHEMA

    con = connect(settings, views=(name,))
    try:
        pruned = f"batch IN (SELECT unnest({sql_list(list(batches))})) AND " if batches else ""
        table = con.execute(
            f"SELECT * FROM {name} WHERE {pruned}id IN (SELECT unnest({sql_list(list(ids))}))"
        ).fetch_arrow_table()
    finally:
        con.close()
    # A table written before a column existed has none: it reads as null (writers evolve it).
    for missing in (f for f in TABLE_SCHEMA if f.name not in table.schema.names):
        table = table.append_column(missing, pa.nulls(table.num_rows, missing.type))
    return table.select(TABLE_SCHEMA.names).cast(TABLE_SCHEMA)


def batch_state(settings: Settings, store: ObjectStore, batch: str) -> dict[int, RowState]:
    """For each row of ``batch``: its request hash, statuses and last error, as now recorded.

    The engine uses this to skip rows already paid for (``stored`` or ``unsafe``).
    """
    from ideogram_pipeline.history.schema import RowState

    con = connect(settings, store, views=(GENERATIONS,))
    try:
        rows = con.execute(
            'SELECT "row", any_value(request_hash), list(DISTINCT status), any_value(error), '
            "any_value(attempt_id), "
            # An image whose storage failed is still to be finished from the ledger (and a
            # row whose every image did so has no finished index at all, not a NULL list).
            "coalesce(list(DISTINCT image_index) "
            "FILTER (coalesce(failure_kind, '') <> 'storage'), []), "
            "bool_or(coalesce(simulated, false)) "
            'FROM generations WHERE batch = ? GROUP BY "row"',
            [batch],
        ).fetchall()
    finally:
        con.close()
    return {
        row: RowState(
            request_hash,
            frozenset(statuses),
            error,
            attempt_id,
            frozenset(indexes),
            bool(simulated),
        )
        for row, request_hash, statuses, error, attempt_id, indexes, simulated in rows
    }

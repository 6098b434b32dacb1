"""Running a user's own SQL against the history, inside a boundary DuckDB enforces.

``ideogram-pipeline query`` executes whatever SQL it is given: that is its purpose. A plain
DuckDB connection would also let that SQL read any file the user can (``read_csv('/etc/
passwd')``), print environment variables (``getenv('AWS_SECRET_ACCESS_KEY')``), fetch URLs,
install extensions, or write files with ``COPY ... TO``, including fake Parquet into the
history itself. SQL pasted from a ticket or a chat is not always what it seems.

The boundary, from the outside in:

1. The connection is built as usual (views, ``httpfs`` and the S3 secret for an S3 root).
2. Then DuckDB is locked down: ``allowed_directories`` is the storage root only (a local
   directory, or ``s3://bucket/prefix/``), ``enable_external_access = false`` makes every
   other file, URL and extension install fail, unredacted secrets stay hidden, and
   ``lock_configuration = true`` refuses any ``SET`` that would undo it.
3. Only ``SELECT``-like statements run (``SELECT``, ``WITH``, ``FROM``, ``DESCRIBE``,
   ``SUMMARIZE``, ``SHOW``, ``PRAGMA show_tables``, ``EXPLAIN``): ``COPY``, ``EXPORT``,
   ``ATTACH``, ``CREATE`` (secrets included), ``INSTALL``/``LOAD`` and ``SET`` are refused
   before execution, because the storage root itself must stay read-only to a query. They
   may not call ``delta_scan`` (it reads a table's log outside DuckDB's file system, where
   ``allowed_directories`` does not reach) nor ``query``/``query_table`` (SQL from strings).

4. A query runs under a memory limit (DuckDB's ``memory_limit``, set before the lock, so
   SQL cannot raise it) and a time limit (a timer thread interrupts the connection):
   :class:`QueryLimits`, whose defaults keep a shared machine alive and which the
   ``query`` command's ``--memory-limit`` and ``--timeout`` change. Reaching either stops
   the query with :class:`QueryLimitReached`, naming the option that raises it.

What the boundary does not cover: reading anything under the storage root is allowed by
design (all of it is the history and its images), DuckDB adds its own spill folder
(``.tmp`` in the working directory) to the allowed list, a query can still use CPU up to
its time limit, and a symbolic link placed inside a local root is followed by the
operating system.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb

from ideogram_pipeline.safe_output import sql_list, sql_literal
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ALLOWED_STATEMENTS",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_TIMEOUT_S",
    "QueryLimitReached",
    "QueryLimits",
    "QueryRefused",
    "allowed_root",
    "check_statements",
    "lock_down",
    "query_rows",
    "run_query",
    "sandboxed_connection",
    "views_for",
]

ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


#: Memory one query may use: DuckDB's own default is 80% of the machine, which a careless
#: cross join takes from every other process (and a batch running beside it).
DEFAULT_MEMORY_LIMIT = "2GB"
#: Seconds one query may run: a full scan of a million records takes a few seconds.
DEFAULT_TIMEOUT_S = 300.0
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)


class QueryRefused(ValueError):
    """The SQL asks for something a history query may not do; the message says what."""


class QueryLimitReached(RuntimeError):
    """The query used its whole memory or time allowance; the message names the option."""


@dataclass(frozen=True)
class QueryLimits:
    """The memory (DuckDB size, e.g. ``2GB`` or ``512MB``) and seconds one query may use."""

    memory_limit: str = DEFAULT_MEMORY_LIMIT
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        match = _MEMORY.match(self.memory_limit)
        if match is None or float(match[1]) <= 0:
            raise ValueError(
                f"memory limit {self.memory_limit!r} is not a size such as 512MB or 2GB"
            )
        object.__setattr__(self, "memory_limit", f"{match[1]}{match[2].upper()}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be more than 0 seconds, got {self.timeout_s}")


def allowed_root(settings: Settings, store: ObjectStore) -> str:
    """The one prefix queries may read: the storage root, with a trailing ``/``.

    The slash matters: DuckDB compares prefixes as strings, so ``/data`` would also allow
    ``/data-private``.
    """
    if settings.is_s3:
        from ideogram_pipeline.storage.s3 import parse_s3_uri

        bucket, prefix = parse_s3_uri(settings.storage)
        return f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
    return store.root.rstrip("/") + "/"


def lock_down(
    con: duckdb.DuckDBPyConnection, allowed: list[str], memory_limit: str | None = None
) -> None:
    """Restrict ``con`` to ``allowed`` prefixes (and ``memory_limit``, a DuckDB size) and
    freeze its configuration.

    Call it after everything that needs external access (loading ``httpfs``, creating the S3
    secret, registering views): afterwards nothing can be loaded or changed.
    """
    if memory_limit is not None:
        con.execute(f"SET memory_limit = {sql_literal(memory_limit)}")
    for statement in (
        f"SET allowed_directories = {sql_list(allowed)}",
        "SET enable_external_access = false",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET allow_community_extensions = false",
        "SET allow_unredacted_secrets = false",
        "SET lock_configuration = true",
    ):
        con.execute(statement)


#: Table functions a query may not call itself. ``delta_scan`` reads a table's log outside
#: DuckDB's file system (so ``allowed_directories`` would not stop it listing another
#: table); ``query``/``query_table`` run SQL built from strings, past this check. The views
#: already read the history's tables.
REFUSED_FUNCTIONS = frozenset({"delta_scan", "query", "query_table"})
_FUNCTION_NAME = re.compile(r'"function_name":"(\w+)"')
_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?\s", re.IGNORECASE)


def _functions(con: duckdb.DuckDBPyConnection, statement_sql: str) -> set[str]:
    """Every function a SELECT calls, from DuckDB's own parse tree."""
    body = _EXPLAIN.sub("", statement_sql)
    (tree,) = con.execute(f"SELECT json_serialize_sql({sql_literal(body)})").fetchone() or ("",)
    return {name.lower() for name in _FUNCTION_NAME.findall(tree or "")}


def check_statements(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`QueryRefused` unless every statement in ``sql`` only reads, and only
    through the history's views.

    Parsing errors are DuckDB's own (``duckdb.ParserException``), left to the caller.
    """
    statements = con.extract_statements(sql)
    if not statements:
        raise QueryRefused("no SQL statement given")
    for statement in statements:
        if statement.type not in ALLOWED_STATEMENTS:
            kind = statement.type.name
            raise QueryRefused(
                f"{kind} statements are not allowed here: queries only read the history "
                "(SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN)"
            )
        refused = sorted(_functions(con, statement.query) & REFUSED_FUNCTIONS)
        if refused:
            raise QueryRefused(
                f"{refused[0]}() is not allowed here: read the history through its views "
                "(generations, generations_all, generation_records)"
            )


#: Words that mean a query may look at the catalogue (which should list every view).
_CATALOGUE = re.compile(
    r"\b(show|describe|summarize|pragma|information_schema|duckdb_\w+|pg_\w+|sqlite_\w+)\b",
    re.IGNORECASE,
)


def views_for(sql: str | None) -> tuple[str, ...]:
    """The history views ``sql`` needs: those it names, or all when it may list them.

    A view is named in the SQL text to be used (identifiers, quoted or not, and table
    names in strings alike), so leaving out the others changes no answer and saves
    binding them over every metadata file.
    """
    from ideogram_pipeline.history import VIEWS

    if sql is None or _CATALOGUE.search(sql):
        return VIEWS
    named = tuple(v for v in VIEWS if re.search(rf"\b{v}\b", sql, re.IGNORECASE))
    return named or VIEWS


def sandboxed_connection(
    settings: Settings,
    store: ObjectStore | None = None,
    *,
    sql: str | None = None,
    limits: QueryLimits | None = None,
) -> duckdb.DuckDBPyConnection:
    """A history connection (see :func:`ideogram_pipeline.history.connect`), locked down
    under ``limits``' memory limit (default :class:`QueryLimits`).

    Given the ``sql`` it will run (once), only the views that SQL names are created.
    """
    from ideogram_pipeline import history

    limits = limits or QueryLimits()
    store = store or open_store(settings)
    # People see each batch's latest file in `generations` (`generations_all`: every row).
    con = history.connect(settings, store, views=views_for(sql), file_rows_only=True)
    try:
        lock_down(con, [allowed_root(settings, store)], limits.memory_limit)
    except BaseException:
        con.close()
        raise
    return con


@contextlib.contextmanager
def _executed(
    settings: Settings, sql: str, store: ObjectStore | None, limits: QueryLimits | None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The connection with ``sql`` executed, its results to fetch inside the block; the time
    limit covers both (DuckDB produces a large result while it is fetched)."""
    limits = limits or QueryLimits()
    con = sandboxed_connection(settings, store, sql=sql, limits=limits)
    timer = threading.Timer(limits.timeout_s, con.interrupt)
    timer.daemon = True
    try:
        check_statements(con, sql)
        timer.start()
        con.execute(sql)
        yield con
    except duckdb.InterruptException:
        raise QueryLimitReached(
            f"the query was stopped after {limits.timeout_s:g} s, its time limit: narrow it "
            "(a WHERE on batch or date reads fewer files) or give a longer --timeout"
        ) from None
    except duckdb.OutOfMemoryException:
        raise QueryLimitReached(
            f"the query needs more than its memory limit of {limits.memory_limit}: narrow it, "
            "or give a larger --memory-limit (DuckDB spills what it can to disk; this could "
            "not be)"
        ) from None
    finally:
        timer.cancel()
        con.close()


def query_rows(
    settings: Settings,
    sql: str,
    store: ObjectStore | None = None,
    limits: QueryLimits | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run the user's ``sql`` inside the boundary: the last statement's column names and
    rows, as Python values (what the ``query`` command prints, without pandas).

    Raises :class:`QueryRefused` for a statement that writes or configures,
    :class:`QueryLimitReached` when ``limits`` (default :class:`QueryLimits`) stop it, and
    ``duckdb.Error`` for SQL that fails (including a path outside the storage root).
    """
    with _executed(settings, sql, store, limits) as con:
        columns = [column[0] for column in con.description or []]
        return columns, con.fetchall() if columns else []


def run_query(
    settings: Settings,
    sql: str,
    store: ObjectStore | None = None,
    limits: QueryLimits | None = None,
) -> pd.DataFrame:
    """As :func:`query_rows`, as a DataFrame (for notebooks and scripts)."""
    with _executed(settings, sql, store, limits) as con:
        return con.df()

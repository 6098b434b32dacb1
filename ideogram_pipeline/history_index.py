"""The history views without per-query window functions: a cached list of hidden rows.

The ``generations`` view (``history.py``) hides three kinds of record:

1. the second copy of a row that compaction or a cleanup rewrite has written into a new
   file whose inputs are not deleted yet (``generation_records`` too);
2. records of an older attempt at a CSV row that a later run attempted again;
3. an image's earlier record when a later run finished it (a storage failure), by id.

Written as window functions (:func:`ideogram_pipeline.history.view_sql`, the portable SQL
that ``duckdb-init`` prints) every query pays for them on every row: at a million records a
lookup by id took over 30 s against 1 s for plain ``read_parquet``. Yet hidden rows are
rare and only arise in a few places, and metadata files are immutable, so they are worked
out once and remembered:

- a batch whose files are all engine flushes (``<run>-<8 hex>.parquet``) of a single run
  has nothing to hide: one run makes one attempt per row and writes each record once;
- any other batch (several runs, compacted or rewritten files) gets its hidden rows
  computed with the very same window functions, over that batch's files only (all three
  are partitioned within a batch: record ids embed the batch key), as pairs of a file
  (its position among the batch's files) and ``file_row_number``;
- the result is cached per batch under a signature of its file listing (names, sizes,
  times) and of these rules (:func:`rules_digest`), in a local cache folder
  (``IDEOGRAM_CACHE_DIR``, default ``~/.cache/ideogram-pipeline``), so only batches whose
  files changed are recomputed.

The connection then reads exactly the files it listed (a consistent snapshot: files added
later are not seen, files deleted later make the query fail rather than answer wrongly)
and hides the listed rows with an anti-join on DuckDB's ``file_index`` and
``file_row_number``, which costs a few percent of a plain scan.

All of it runs in DuckDB (the cache is Parquet read and written by DuckDB), with values
written into the SQL as escaped literals: building Arrow tables from Python, or binding
a parameter, imports pandas, a third of a short query's start-up. ``history_plan.py``
keeps the outcome for a whole listing, so an unchanged history skips even this.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ideogram_pipeline.safe_output import sql_list, sql_literal
from ideogram_pipeline.storage.base import ObjectInfo, ObjectStore
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "HIDDEN_TABLE",
    "HIVE_TYPES",
    "cache_dir",
    "cache_root",
    "listing_signature",
    "load_hidden_rows",
    "metadata_files",
    "read_sql",
    "rules_digest",
    "same_schema",
    "write_parquet",
]

HIVE_TYPES = "{'date': DATE, 'batch': VARCHAR}"
#: The temp table of hidden rows: ``file_index`` (UBIGINT, a position in the file list),
#: ``file_row_number``, ``generations_only`` (hidden from ``generations``, kept in
#: ``generation_records``).
HIDDEN_TABLE = "_history_hidden"
#: The cache, one row per hidden row, plus a row of nulls per computed batch. A file is
#: named by its position among its batch's files (sorted by key), which the signature
#: pins: short integers instead of URIs keep the cache small and quick to map.
_CACHE_COLUMNS = (
    "batch VARCHAR, signature VARCHAR, file_position INTEGER, file_row_number BIGINT, "
    "generations_only BOOLEAN"
)
#: A metadata file as the engine's MetadataWriter names it: ``<run id>-<8 hex>.parquet``.
_ENGINE_FILE = re.compile(r"^(?P<run>.+)-[0-9a-f]{8}\.parquet$")
#: Below this many seconds of computing, the cache is not worth a file (small histories).
CACHE_MIN_SECONDS = 0.2


def cache_dir() -> Path:
    """Where computed hidden rows are kept between commands."""
    configured = os.environ.get("IDEOGRAM_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ideogram-pipeline"


def metadata_files(store: ObjectStore) -> list[ObjectInfo]:
    """Every metadata Parquet file under the root, sorted by key."""
    infos = [i for i in store.list(GENERATIONS_PREFIX + "/") if i.key.endswith(".parquet")]
    return sorted(infos, key=lambda info: info.key)


def _batch_of(key: str) -> str:
    for part in key.split("/"):
        if part.startswith("batch="):
            return part[len("batch=") :]
    return ""


def _needs_work(files: Sequence[ObjectInfo]) -> bool:
    """Whether a batch may hold rows to hide: anything but one run's engine flushes."""
    runs = set()
    for info in files:
        match = _ENGINE_FILE.match(info.key.rpartition("/")[2])
        if match is None:
            return True
        runs.add(match["run"])
    return len(runs) > 1


def listing_signature(files: Sequence[ObjectInfo], salt: str = "") -> str:
    """A digest of ``files``' keys, sizes and times (and ``salt``): files are immutable, so
    an equal signature means the same contents."""
    text = "\n".join(f"{i.key}\t{i.size}\t{i.last_modified:.6f}" for i in files)
    return hashlib.sha256(f"{salt}\n{text}".encode()).hexdigest()[:32]


def read_sql(uris: Sequence[str] | str, *, same_schema: bool = False) -> str:
    """``read_parquet`` over exactly ``uris``, in that order (or over the list that the SQL
    expression ``uris`` gives, such as a ``getvariable`` call).

    DuckDB's virtual columns ``file_index`` (position in ``uris``), ``file_row_number`` and
    ``filename`` name each record's place; they cost nothing unless a query uses them.
    ``union_by_name`` (needed when older files lack newer columns) makes DuckDB read every
    footer while binding and map columns file by file, about half again a plain scan at
    3,000 files; ``same_schema`` (see :func:`same_schema`) leaves it out.
    """
    union = "false" if same_schema else "true"
    files = uris if isinstance(uris, str) else sql_list(uris)
    return (
        f"read_parquet({files}, hive_partitioning = true, union_by_name = {union}, "
        f"hive_types = {HIVE_TYPES})"
    )


def write_parquet(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> bool:
    """Write ``query``'s rows to ``path`` as Parquet, whole (temp file, then rename), so
    readers never see half of it; an unwritable cache only costs a recomputation."""
    import duckdb

    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY ({query}) TO {sql_literal(str(temp))} (FORMAT parquet)")
        os.replace(temp, path)
    except (OSError, duckdb.Error):
        temp.unlink(missing_ok=True)
        return False
    return True


def same_schema(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    files: Sequence[ObjectInfo],
    columns: Collection[str],
) -> tuple[bool, bool]:
    """``(same, complete)``: whether every file has the same columns (then no
    ``union_by_name`` is needed), and whether each file has all of ``columns``.

    Files are immutable, so each file's schema fingerprint is read from its footer once
    and cached; a connection reads only the footers of files it has not seen before.
    """
    import duckdb

    wanted = sorted(columns)
    digest = hashlib.sha256("\n".join(wanted).encode("utf-8")).hexdigest()[:12]
    path = cache_root(store).with_suffix(f".schemas-{digest}.parquet")
    known: dict[str, str] = {}
    if path.exists():
        try:
            sql = f"SELECT key, schema FROM read_parquet({sql_literal(str(path))})"
            known = dict(con.execute(sql).fetchall())
        except duckdb.Error:
            pass
    current = [f"{info.key}:{info.size}" for info in files]
    new = [info for info, key in zip(files, current, strict=True) if key not in known]
    if new:
        started = time.monotonic()
        uris = {store.uri(info.key): f"{info.key}:{info.size}" for info in new}
        # A fingerprint of the columns and types, "+" when all wanted columns are there.
        rows = con.execute(
            "SELECT file_name, md5(string_agg(name || ':' || coalesce(type, '') || ':' || "
            "coalesce(num_children, 0), ',' ORDER BY name, type, num_children)) || "
            f"CASE WHEN list_has_all(list(name), {sql_list(wanted)}) THEN '+' ELSE '' END "
            f"FROM parquet_schema({sql_list(list(uris))}) GROUP BY file_name"
        ).fetchall()
        known.update({uris[name]: print_ for name, print_ in rows if name in uris})
        if time.monotonic() - started >= CACHE_MIN_SECONDS or path.exists():
            kept = [key for key in current if key in known]
            schemas = [known[key] for key in kept]
            query = f"SELECT unnest({sql_list(kept)}) AS key, unnest({sql_list(schemas)}) AS schema"
            write_parquet(con, query, path)
    prints = {known.get(key) for key in current}
    # An unknown fingerprint (a footer DuckDB did not describe) must not pass for a match.
    same = len(prints) == 1 and None not in prints
    return same, all(p is not None and p.endswith("+") for p in prints)


def _compute_sql(uris: Sequence[str]) -> str:
    """Rows the views hide among ``uris``, by the window functions of ``history.view_sql``."""
    return f"""
        WITH raw AS (
            SELECT file_index, file_row_number, date, batch, id, "row", attempt_id, created_at
            FROM {read_sql(uris)}
        ),
        ranked AS (
            SELECT *, row_number() OVER (
                PARTITION BY date, batch, id ORDER BY created_at DESC) AS copy
            FROM raw
        ),
        attempts AS (
            SELECT *, attempt_id = max(attempt_id) OVER (PARTITION BY batch, "row") AS latest
            FROM ranked WHERE copy = 1
        ),
        images AS (
            SELECT *, row_number() OVER (
                PARTITION BY batch, id ORDER BY created_at DESC) AS newest
            FROM attempts WHERE latest
        )
        SELECT batch, file_index, file_row_number, false AS generations_only
        FROM ranked WHERE copy > 1
        UNION ALL
        SELECT batch, file_index, file_row_number, true FROM attempts WHERE latest IS NOT TRUE
        UNION ALL
        SELECT batch, file_index, file_row_number, true FROM images WHERE newest > 1
    """


@functools.cache
def rules_digest() -> str:
    """A digest of the rules that pick hidden rows, so caches built by other rules are
    never read as if they were built by these."""
    return hashlib.sha256(_compute_sql(["<files>"]).encode()).hexdigest()[:12]


def cache_root(store: ObjectStore) -> Path:
    """The cache file of ``store``'s hidden rows; other caches of the root sit beside it."""
    digest = hashlib.sha256(store.root.encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "history" / f"{digest}.parquet"


def _load_cache(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """``_hidden_cache``: the cached rows of the batches in ``_hidden_wanted`` whose
    signature still matches (nothing when the file is missing or unreadable)."""
    import duckdb

    con.execute(f"CREATE OR REPLACE TEMP TABLE _hidden_cache ({_CACHE_COLUMNS})")
    if not path.exists():
        return
    try:
        con.execute(
            "INSERT INTO _hidden_cache SELECT c.batch, c.signature, c.file_position, "
            f"c.file_row_number, c.generations_only FROM read_parquet({sql_literal(str(path))}) "
            "AS c SEMI JOIN _hidden_wanted AS w USING (batch, signature)"
        )
    except duckdb.Error:
        con.execute("DELETE FROM _hidden_cache")  # another version's or a damaged file


def load_hidden_rows(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    files: Sequence[ObjectInfo],
    uris: Sequence[str],
) -> None:
    """Fill the temp table :data:`HIDDEN_TABLE` with every row the views hide (it exists,
    empty, when nothing is hidden).

    ``file_index`` there is the file's position in ``files`` (whose URIs are ``uris``):
    DuckDB's ``file_index`` virtual column when they are read in that order.
    """
    # Each batch's files, and their positions in ``files`` (the cache's file_position).
    by_batch: dict[str, list[ObjectInfo]] = defaultdict(list)
    positions: dict[str, list[int]] = defaultdict(list)
    for index, info in enumerate(files):
        batch = _batch_of(info.key)
        by_batch[batch].append(info)
        positions[batch].append(index)
    signatures = {
        batch: listing_signature(batch_files, salt=rules_digest())
        for batch, batch_files in by_batch.items()
        if _needs_work(batch_files)
    }
    if not signatures:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {HIDDEN_TABLE} "
            "(file_index UBIGINT, file_row_number BIGINT, generations_only BOOLEAN)"
        )
        return
    # As text ("3,17,40"): DuckDB binds one string per batch far faster than nested lists.
    listed = [",".join(map(str, positions[batch])) for batch in signatures]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _hidden_wanted AS SELECT "
        f"unnest({sql_list(list(signatures))}::VARCHAR[]) AS batch, "
        f"unnest({sql_list(list(signatures.values()))}::VARCHAR[]) AS signature, "
        f"unnest({sql_list(listed)}::VARCHAR[]) AS files"
    )
    path = cache_root(store)
    _load_cache(con, path)
    known = {row[0] for row in con.execute("SELECT DISTINCT batch FROM _hidden_cache").fetchall()}
    stale = [batch for batch in signatures if batch not in known]
    if stale:
        started = time.monotonic()
        stale_uris = [uris[index] for batch in stale for index in positions[batch]]
        # Where each batch's files start in stale_uris, to turn file_index into a position.
        starts, offset = [], 0
        for batch in stale:
            starts.append(f"({sql_literal(batch)}, {offset})")
            offset += len(positions[batch])
        con.execute(
            "INSERT INTO _hidden_cache SELECT h.batch, w.signature, "
            "(h.file_index - s.start)::INTEGER, h.file_row_number, h.generations_only "
            f"FROM ({_compute_sql(stale_uris)}) AS h JOIN _hidden_wanted AS w USING (batch) "
            f"JOIN (VALUES {', '.join(starts)}) AS s(batch, start) USING (batch)"
        )
        # A row of nulls records that a batch was computed, even when it hides nothing.
        con.execute(
            "INSERT INTO _hidden_cache (batch, signature) "
            "SELECT batch, signature FROM _hidden_wanted "
            f"WHERE list_contains({sql_list(stale)}::VARCHAR[], batch)"
        )
        if time.monotonic() - started >= CACHE_MIN_SECONDS or path.exists():
            write_parquet(con, "SELECT * FROM _hidden_cache ORDER BY batch", path)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {HIDDEN_TABLE} AS "
        "SELECT string_split(w.files, ',')[c.file_position + 1]::UBIGINT AS file_index, "
        "c.file_row_number, "
        "c.generations_only FROM _hidden_cache AS c JOIN _hidden_wanted AS w USING (batch) "
        "WHERE c.file_position IS NOT NULL"
    )
    con.execute("DROP TABLE _hidden_cache; DROP TABLE _hidden_wanted")

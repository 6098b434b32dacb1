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
  are partitioned within a batch: record ids embed the batch key), as
  ``(filename, file_row_number)`` pairs;
- the result is cached per batch under a signature of its file listing (names, sizes,
  times), in a local cache folder (``IDEOGRAM_CACHE_DIR``, default
  ``~/.cache/ideogram-pipeline``), so only batches whose files changed are recomputed.

The connection then reads exactly the files it listed (a consistent snapshot: files added
later are not seen, files deleted later make the query fail rather than answer wrongly)
and hides the listed rows with an anti-join, which costs about a tenth of a plain scan.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ideogram_pipeline.storage.base import ObjectInfo, ObjectStore
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "HIDDEN_SCHEMA",
    "HIVE_TYPES",
    "cache_dir",
    "hidden_rows",
    "metadata_files",
    "read_sql",
    "same_schema",
]

HIVE_TYPES = "{'date': DATE, 'batch': VARCHAR}"
#: ``generations_only``: hidden from ``generations`` but kept in ``generation_records``.
HIDDEN_SCHEMA = pa.schema(
    [
        ("file_index", pa.uint64()),
        ("file_row_number", pa.int64()),
        ("generations_only", pa.bool_()),
    ]
)
#: The cache names files (indexes change as files come and go), one row per hidden row.
_CACHE_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("signature", pa.string()),
        ("filename", pa.string()),
        ("file_row_number", pa.int64()),
        ("generations_only", pa.bool_()),
    ]
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


def _signature(files: Sequence[ObjectInfo]) -> str:
    text = "\n".join(f"{i.key}\t{i.size}\t{i.last_modified:.6f}" for i in files)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _sql_list(uris: Sequence[str]) -> str:
    return "[" + ", ".join("'" + uri.replace("'", "''") + "'" for uri in uris) + "]"


def read_sql(uris: Sequence[str], *, same_schema: bool = False) -> str:
    """``read_parquet`` over exactly ``uris``, in that order.

    DuckDB's virtual columns ``file_index`` (position in ``uris``), ``file_row_number`` and
    ``filename`` name each record's place; they cost nothing unless a query uses them.
    ``union_by_name`` (needed when older files lack newer columns) makes DuckDB read every
    footer while binding and map columns file by file, about half again a plain scan at
    3,000 files; ``same_schema`` (see :func:`same_schema`) leaves it out.
    """
    union = "false" if same_schema else "true"
    return (
        f"read_parquet({_sql_list(uris)}, hive_partitioning = true, union_by_name = {union}, "
        f"hive_types = {HIVE_TYPES})"
    )


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
    wanted = sorted(columns)
    digest = hashlib.sha256("\n".join(wanted).encode("utf-8")).hexdigest()[:12]
    path = _cache_path(store).with_suffix(f".schemas-{digest}.parquet")
    known: dict[str, str] = {}
    try:
        table = pq.ParquetFile(path).read()
        keys, schemas = table.column("key").to_pylist(), table.column("schema").to_pylist()
        known = dict(zip(keys, schemas, strict=True))
    except (OSError, pa.ArrowInvalid, KeyError):
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
            "CASE WHEN list_has_all(list(name), ?) THEN '+' ELSE '' END "
            f"FROM parquet_schema({_sql_list(list(uris))}) GROUP BY file_name",
            [wanted],
        ).fetchall()
        known.update({uris[name]: print_ for name, print_ in rows if name in uris})
        if time.monotonic() - started >= CACHE_MIN_SECONDS or path.exists():
            kept = [key for key in current if key in known]
            table = pa.table({"key": kept, "schema": [known[key] for key in kept]})
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
                pq.write_table(table, temp)
                os.replace(temp, path)
            except OSError:
                pass
    prints = {known.get(key) for key in current}
    return len(prints) == 1, all(p is not None and p.endswith("+") for p in prints)


def _compute(con: duckdb.DuckDBPyConnection, uris: Sequence[str]) -> pa.Table:
    """Rows the views hide among ``uris``, by the window functions of ``history.view_sql``."""
    sql = f"""
        WITH raw AS (
            SELECT filename, file_row_number, date, batch, id, "row", attempt_id, created_at
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
        SELECT batch, filename, file_row_number, false AS generations_only
        FROM ranked WHERE copy > 1
        UNION ALL
        SELECT batch, filename, file_row_number, true FROM attempts WHERE latest IS NOT TRUE
        UNION ALL
        SELECT batch, filename, file_row_number, true FROM images WHERE newest > 1
    """
    return con.execute(sql).to_arrow_table()


def _cache_path(store: ObjectStore) -> Path:
    digest = hashlib.sha256(store.root.encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "history" / f"{digest}.parquet"


def _load_cache(path: Path) -> pa.Table:
    try:
        table = pq.ParquetFile(path).read()  # read_table would import pyarrow.dataset (+pandas)
    except (OSError, pa.ArrowInvalid):
        return _CACHE_SCHEMA.empty_table()
    return table if table.schema == _CACHE_SCHEMA else _CACHE_SCHEMA.empty_table()


def _save_cache(path: Path, table: pa.Table) -> None:
    """Write the cache whole (temp file, then rename), so readers never see half of it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(table, temp, compression="zstd")
        os.replace(temp, path)
    except OSError:
        pass  # an unwritable cache only costs the next command the same computation


def _entries(batches: Sequence[str], signatures: Mapping[str, str]) -> pa.Array:
    return pa.array([f"{batch}\t{signatures[batch]}" for batch in batches], pa.string())


def _computed_entries(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    stale: Mapping[str, Sequence[ObjectInfo]],
    signatures: Mapping[str, str],
) -> pa.Table:
    """Cache rows for the ``stale`` batches: their hidden rows, and one row of nulls per
    batch, which records that the batch was computed even when it hides nothing."""
    computed = _compute(con, [store.uri(info.key) for files in stale.values() for info in files])
    batches = computed.column("batch").to_pylist()
    rows = pa.table(
        {
            "batch": pa.array(batches, pa.string()),
            "signature": pa.array([signatures[batch] for batch in batches], pa.string()),
            "filename": computed.column("filename").cast(pa.string()),
            "file_row_number": computed.column("file_row_number").cast(pa.int64()),
            "generations_only": computed.column("generations_only").cast(pa.bool_()),
        },
        schema=_CACHE_SCHEMA,
    )
    markers = pa.Table.from_pylist(
        [{"batch": b, "signature": signatures[b]} for b in stale], schema=_CACHE_SCHEMA
    )
    return pa.concat_tables([rows, markers])


def hidden_rows(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    files: Sequence[ObjectInfo],
    uris: Sequence[str] | None = None,
) -> pa.Table:
    """``(file_index, file_row_number, generations_only)`` of every row the views hide.

    ``file_index`` is the file's position in ``files``: DuckDB's ``file_index`` virtual
    column when ``files`` are read in that order (integers join far faster than names).
    ``uris`` are the files' URIs, when the caller has them already.
    """
    by_batch: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in files:
        by_batch[_batch_of(info.key)].append(info)
    signatures = {
        batch: _signature(batch_files)
        for batch, batch_files in by_batch.items()
        if _needs_work(batch_files)
    }
    if not signatures:
        return HIDDEN_SCHEMA.empty_table()
    path = _cache_path(store)
    cache = _load_cache(path)
    entry = pc.binary_join_element_wise(cache.column("batch"), cache.column("signature"), "\t")
    cache = cache.filter(pc.is_in(entry, value_set=_entries(list(signatures), signatures)))
    known = set(pc.unique(cache.column("batch")).to_pylist())
    stale = {batch: by_batch[batch] for batch in signatures if batch not in known}
    if stale:
        started = time.monotonic()
        cache = pa.concat_tables([cache, _computed_entries(con, store, stale, signatures)])
        if time.monotonic() - started >= CACHE_MIN_SECONDS or path.exists():
            _save_cache(path, cache)
    cache = cache.filter(cache.column("filename").is_valid())
    if uris is None:
        uris = [store.uri(info.key) for info in files]
    index = pc.index_in(cache.column("filename"), value_set=pa.array(uris, pa.string()))
    hidden = pa.table(
        {
            "file_index": index.cast(pa.uint64()),
            "file_row_number": cache.column("file_row_number"),
            "generations_only": cache.column("generations_only"),
        },
        schema=HIDDEN_SCHEMA,
    )
    return hidden.filter(hidden.column("file_index").is_valid())

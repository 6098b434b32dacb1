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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from ideogram_pipeline.storage.base import ObjectInfo, ObjectStore
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX

if TYPE_CHECKING:
    import duckdb

__all__ = ["HIDDEN_SCHEMA", "HIVE_TYPES", "cache_dir", "hidden_rows", "metadata_files", "read_sql"]

HIVE_TYPES = "{'date': DATE, 'batch': VARCHAR}"
#: ``generations_only``: hidden from ``generations`` but kept in ``generation_records``.
HIDDEN_SCHEMA = pa.schema(
    [
        ("filename", pa.string()),
        ("file_row_number", pa.int64()),
        ("generations_only", pa.bool_()),
    ]
)
_CACHE_SCHEMA = pa.schema([("batch", pa.string()), ("signature", pa.string()), *HIDDEN_SCHEMA])
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


def read_sql(uris: Sequence[str]) -> str:
    """``read_parquet`` over exactly ``uris``, with the file and row of each record."""
    return (
        f"read_parquet({_sql_list(uris)}, hive_partitioning = true, union_by_name = true, "
        f"hive_types = {HIVE_TYPES}, filename = true, file_row_number = true)"
    )


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
        SELECT filename, file_row_number, false AS generations_only FROM ranked WHERE copy > 1
        UNION ALL
        SELECT filename, file_row_number, true FROM attempts WHERE latest IS NOT TRUE
        UNION ALL
        SELECT filename, file_row_number, true FROM images WHERE newest > 1
    """
    return con.execute(sql).to_arrow_table().cast(HIDDEN_SCHEMA)


def _cache_path(store: ObjectStore) -> Path:
    digest = hashlib.sha256(store.root.encode("utf-8")).hexdigest()[:24]
    return cache_dir() / "history" / f"{digest}.parquet"


def _split(table: pa.Table, batches: Sequence[str]) -> dict[str, pa.Table]:
    """``table``'s rows grouped by ``batches`` (one batch name per row)."""
    indices: dict[str, list[int]] = defaultdict(list)
    for index, batch in enumerate(batches):
        indices[batch].append(index)
    return {batch: table.take(rows) for batch, rows in indices.items()}


def _load_cache(path: Path) -> dict[str, tuple[str, pa.Table]]:
    try:
        table = pq.ParquetFile(path).read()  # read_table would import pyarrow.dataset (+pandas)
    except (OSError, pa.ArrowInvalid):
        return {}
    if table.schema != _CACHE_SCHEMA:
        return {}
    cached: dict[str, tuple[str, pa.Table]] = {}
    for batch, rows in _split(table, table.column("batch").to_pylist()).items():
        signature = rows.column("signature")[0].as_py()
        hidden = rows.select(HIDDEN_SCHEMA.names)
        hidden = hidden.filter(hidden.column("filename").is_valid())
        cached[batch] = (signature, hidden.cast(HIDDEN_SCHEMA))
    return cached


def _save_cache(path: Path, entries: Mapping[str, tuple[str, pa.Table]]) -> None:
    """Write the cache whole (temp file, then rename), so readers never see half of it."""
    parts = []
    for batch, (signature, hidden) in sorted(entries.items()):
        # An empty entry still records that the batch was computed: one row of nulls.
        rows = hidden if hidden.num_rows else pa.Table.from_pylist([{}], schema=HIDDEN_SCHEMA)
        parts.append(
            rows.add_column(0, "signature", pa.array([signature] * rows.num_rows, pa.string()))
            .add_column(0, "batch", pa.array([batch] * rows.num_rows, pa.string()))
            .cast(_CACHE_SCHEMA)
        )
    table = pa.concat_tables(parts) if parts else _CACHE_SCHEMA.empty_table()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(table, temp, compression="zstd")
        os.replace(temp, path)
    except OSError:
        pass  # an unwritable cache only costs the next command the same computation


def hidden_rows(
    con: duckdb.DuckDBPyConnection, store: ObjectStore, files: Sequence[ObjectInfo]
) -> pa.Table:
    """``(filename, file_row_number, generations_only)`` of every row the views hide."""
    by_batch: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in files:
        by_batch[_batch_of(info.key)].append(info)
    wanted = {
        batch: _signature(batch_files)
        for batch, batch_files in by_batch.items()
        if _needs_work(batch_files)
    }
    if not wanted:
        return HIDDEN_SCHEMA.empty_table()
    path = _cache_path(store)
    cached = _load_cache(path)
    stale = [
        batch for batch, signature in wanted.items() if cached.get(batch, ("",))[0] != signature
    ]
    entries = {batch: cached[batch] for batch in wanted if batch not in stale}
    if stale:
        started = time.monotonic()
        uris = [store.uri(info.key) for batch in stale for info in by_batch[batch]]
        computed = _compute(con, uris)
        groups = _split(computed, [_batch_of(f) for f in computed.column("filename").to_pylist()])
        for batch in stale:
            entries[batch] = (wanted[batch], groups.get(batch, HIDDEN_SCHEMA.empty_table()))
        if time.monotonic() - started >= CACHE_MIN_SECONDS or path.exists():
            _save_cache(path, entries)
    tables = [hidden for _signature_, hidden in entries.values() if hidden.num_rows]
    return pa.concat_tables(tables) if tables else HIDDEN_SCHEMA.empty_table()

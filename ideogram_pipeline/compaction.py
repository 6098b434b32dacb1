"""Compaction: merge each partition's many small Parquet files into few larger ones.

Every batch flush writes a new file, so a partition of a busy day can hold hundreds of
small files, and reading them costs one request each (on S3, one GET per file and query).
Compaction merges the small files of one partition folder into files of about
``target_bytes`` and deletes the inputs.

**Atomic with respect to readers, and why this way.** S3 has no rename and no multi-object
transaction, so some order of "write the new file" and "delete the old ones" must be visible
to a reader in between. Deleting first would show a gap (rows missing: wrong answers);
writing first shows every row twice for a moment. We write first and make the duplicates
invisible where people read: the ``generation_records`` view keeps one row per ``id``
(``QUALIFY row_number() OVER (PARTITION BY date, batch, id) = 1`` in
:func:`ideogram_pipeline.history.view_sql`). Ids are unique per record (uuid4), a merged
row is byte-for-byte the row it came from, and a file never moves between partitions, so
partitioning the dedupe by the Hive keys is exact and still lets DuckDB prune partitions
on ``date``/``batch`` filters. The alternative, a manifest of live files that readers
consult, would break the contract that plain DuckDB over ``metadata/generations/**`` works.
A plain ``read_parquet`` of the glob can see the duplicates only during a compaction.

**Crash-safe.** The merged file's name is a hash of its inputs, and merging keeps one row
per id (the newest file's copy), so a compaction killed after writing and before deleting
leaves a state the next run merges again without duplicating anything.

The same routine merges the usage roll-up files and the pin event log.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from ideogram_pipeline.lifecycle import (
    LifecycleLock,
    crash_point,
    read_parquet_object,
    write_parquet_object,
)
from ideogram_pipeline.pins import PINS_PREFIX, pin_events, write_merged
from ideogram_pipeline.retention import USAGE_PREFIX
from ideogram_pipeline.storage import ObjectInfo, ObjectStore
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX

__all__ = ["CompactionResult", "compact", "count_files"]

MiB = 1024 * 1024
#: Pin event files are merged once there are at least this many.
PIN_FILES_THRESHOLD = 16

#: Called after a merged file is written and before its inputs are deleted (tests use it
#: to query the history in exactly that moment).
WrittenHook = Callable[[str, list[str]], None]


@dataclass
class CompactionResult:
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    partitions_compacted: int = 0
    merged: dict[str, list[str]] = field(default_factory=dict)  # new key -> its inputs

    def as_dict(self) -> dict[str, int]:
        return {
            "files_before": self.files_before,
            "files_after": self.files_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "partitions_compacted": self.partitions_compacted,
        }


def count_files(store: ObjectStore, prefix: str = GENERATIONS_PREFIX) -> tuple[int, int]:
    """Number and total bytes of the Parquet files under ``prefix``."""
    infos = [i for i in store.list(prefix + "/") if i.key.endswith(".parquet")]
    return len(infos), sum(i.size for i in infos)


def _folders(store: ObjectStore, prefix: str) -> dict[str, list[ObjectInfo]]:
    folders: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in store.list(prefix + "/"):
        if info.key.endswith(".parquet"):
            folders[info.key.rpartition("/")[0]].append(info)
    return folders


def _groups(files: list[ObjectInfo], target_bytes: int) -> list[list[ObjectInfo]]:
    """Consecutive small files packed into groups of about ``target_bytes``."""
    small = sorted((f for f in files if f.size < target_bytes), key=lambda f: f.key)
    groups: list[list[ObjectInfo]] = []
    current: list[ObjectInfo] = []
    size = 0
    for info in small:
        if current and size + info.size > target_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(info)
        size += info.size
    if current:
        groups.append(current)
    return [group for group in groups if len(group) > 1]


def _merge(store: ObjectStore, group: list[ObjectInfo]) -> pa.Table:
    """The group's rows, one per id; where an id repeats, the most recent file's copy."""
    ordered = sorted(group, key=lambda f: (f.last_modified, f.key), reverse=True)
    tables = [read_parquet_object(store, info.key) for info in ordered]
    table = pa.concat_tables(tables, promote_options="permissive")
    ids = table.column("id").to_pylist()
    first: dict[str, int] = {}
    for index, record_id in enumerate(ids):
        first.setdefault(record_id, index)
    if len(first) < len(ids):
        table = table.take(sorted(first.values()))
    order = pc.sort_indices(table, sort_keys=[("created_at", "ascending"), ("id", "ascending")])
    return table.take(order)


def _compact_prefix(
    store: ObjectStore,
    prefix: str,
    target_bytes: int,
    result: CompactionResult,
    hook: WrittenHook | None,
) -> None:
    for folder, files in sorted(_folders(store, prefix).items()):
        result.files_before += len(files)
        result.bytes_before += sum(f.size for f in files)
        groups = _groups(files, target_bytes)
        if groups:
            result.partitions_compacted += 1
        for group in groups:
            inputs = [f.key for f in group]
            digest = hashlib.sha256("\n".join(inputs).encode()).hexdigest()[:16]
            key = f"{folder}/compact-{digest}.parquet"
            write_parquet_object(store, key, _merge(store, group))
            result.merged[key] = inputs
            if hook is not None:
                hook(key, inputs)
            crash_point("compaction-written")
            store.delete([k for k in inputs if k != key])
    after = count_files(store, prefix)
    result.files_after += after[0]
    result.bytes_after += after[1]


def _compact_pins(store: ObjectStore) -> None:
    files = [i.key for i in store.list(PINS_PREFIX + "/") if i.key.endswith(".jsonl")]
    if len(files) < PIN_FILES_THRESHOLD:
        return
    events = pin_events(store)
    digest = hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()[:16]
    key = f"{PINS_PREFIX}/compact-{digest}.jsonl"
    write_merged(store, key, events)  # events carry ids: a reader in between counts each once
    store.delete([k for k in files if k != key])


def compact(
    store: ObjectStore,
    *,
    target_bytes: int = 128 * MiB,
    prefixes: tuple[str, ...] = (GENERATIONS_PREFIX, USAGE_PREFIX),
    on_written: WrittenHook | None = None,
) -> CompactionResult:
    """Merge small files in every partition folder under ``prefixes``; returns the counts."""
    result = CompactionResult()
    with LifecycleLock(store, "compaction"):
        for prefix in prefixes:
            _compact_prefix(store, prefix, target_bytes, result, on_written)
        _compact_pins(store)
    return result

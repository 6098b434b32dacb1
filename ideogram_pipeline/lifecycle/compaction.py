"""Compaction: Delta's own ``OPTIMIZE`` merges each partition's small files into few large ones.

Every metadata flush MERGEs into ``generations`` and appends to ``generation_records``, so a
busy partition collects many small Parquet files, and each costs a request per query (on
S3, one GET per file). ``optimize.compact`` rewrites a partition's small files into files of
about ``target_bytes`` in one commit; a reader sees the version before or the version after,
never both or neither, and a compaction killed before its commit changed nothing. A
conflicting concurrent writer makes the commit fail and it is retried on the newer version
(``HistoryTables.compact``). A vacuum then deletes files replaced at least
``VACUUM_RETENTION_HOURS`` ago (a reader may still be on the version before this one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, USAGE, HistoryTables
from ideogram_pipeline.history.views import HistoryNeedsMigration, needs_migration
from ideogram_pipeline.lifecycle.policy import VACUUM_RETENTION_HOURS
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import open_store

__all__ = ["TABLES", "CompactionResult", "compact", "table_files"]

MiB = 1024 * 1024
#: The tables compaction looks after, in this order.
TABLES = (GENERATIONS, RECORDS, USAGE)


@dataclass
class CompactionResult:
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    partitions_compacted: int = 0
    tables: dict[str, dict[str, int]] = field(default_factory=dict)  # per table, as below

    def as_dict(self) -> dict[str, int]:
        return {
            "files_before": self.files_before,
            "files_after": self.files_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "partitions_compacted": self.partitions_compacted,
        }


def table_files(table: Any) -> tuple[int, int]:
    """Number and total bytes of the data files the current version of ``table`` (a
    ``deltalake.DeltaTable``) reads: files replaced but not yet vacuumed do not count."""
    actions = table.get_add_actions(flatten=True)
    sizes = actions.column("size_bytes").to_pylist() if actions.num_rows else []
    return len(sizes), int(sum(sizes))


def compact(
    settings: Settings,
    *,
    target_bytes: int = 128 * MiB,
    vacuum_hours: int = VACUUM_RETENTION_HOURS,
) -> CompactionResult:
    """OPTIMIZE and vacuum every history table that exists; returns the file counts.

    ``vacuum_hours`` as for ``run_cleanup``: 0 removes the replaced files at once.

    Raises :class:`HistoryNeedsMigration` when the root holds only an old-layout history
    (there is nothing to compact, and saying so would hide that the tables are missing).
    """
    tables = HistoryTables(settings)
    result = CompactionResult()
    store = open_store(settings)
    if needs_migration(store):
        raise HistoryNeedsMigration(
            f"the history under {store.root} is in the old layout: run "
            "`ideogram-pipeline migrate` to move it into the tables, then compact"
        )
    for name in TABLES:
        if not tables.exists(name):
            continue
        files_before, bytes_before = table_files(tables.table(name))
        metrics = tables.compact(name, target_size=target_bytes)
        tables.vacuum(name, retention_hours=vacuum_hours)
        files_after, bytes_after = table_files(tables.table(name))
        partitions = int(metrics.get("partitionsOptimized", 0) or 0)
        result.tables[name] = {
            "files_before": files_before,
            "files_after": files_after,
            "bytes_before": bytes_before,
            "bytes_after": bytes_after,
            "partitions_compacted": partitions,
        }
        result.files_before += files_before
        result.files_after += files_after
        result.bytes_before += bytes_before
        result.bytes_after += bytes_after
        result.partitions_compacted += partitions
    return result

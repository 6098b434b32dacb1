"""One dynamic partition per CSV batch file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ideogram_pipeline.storage.keys import batch_key_for

__all__ = ["BATCH_PARTITIONS", "batch_partitions", "csv_for_partition"]

#: The dynamic partitions' name (``batch_partitions.name`` is typed optional).
BATCH_PARTITIONS = "batches"
batch_partitions = dg.DynamicPartitionsDefinition(name=BATCH_PARTITIONS)


def csv_for_partition(folder: Path, key: str) -> Path | None:
    """The CSV in ``folder`` whose batch key is ``key`` (keys are escaped file stems)."""
    direct = folder / f"{key}.csv"
    if direct.is_file():
        return direct
    for path in sorted(folder.glob("*.csv")):
        if batch_key_for(path.stem) == key:
            return path
    return None

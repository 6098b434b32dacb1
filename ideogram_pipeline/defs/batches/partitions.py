"""One dynamic partition per batch file (CSV, XLSX or XLS) in the prompts folder."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ideogram_pipeline.batches.spreadsheets import BATCH_SUFFIXES, is_batch_file_name
from ideogram_pipeline.storage.keys import batch_key_for

__all__ = ["BATCH_PARTITIONS", "batch_files", "batch_partitions", "csv_for_partition"]

#: When files of several kinds share a stem (``spring.csv``, ``spring.xlsx``), one batch key
#: names them all; the earliest kind here is the one read, everywhere.
_PREFERENCE = {suffix: rank for rank, suffix in enumerate(BATCH_SUFFIXES)}

#: The dynamic partitions' name (``batch_partitions.name`` is typed optional).
BATCH_PARTITIONS = "batches"
batch_partitions = dg.DynamicPartitionsDefinition(name=BATCH_PARTITIONS)


def batch_files(folder: Path) -> dict[str, Path]:
    """Batch key -> the file read for it, for every batch file directly in ``folder``
    (sorted by key; empty when the folder is missing)."""
    if not folder.is_dir():
        return {}
    chosen: dict[str, Path] = {}
    for path in sorted(p for p in folder.iterdir() if is_batch_file_name(p.name)):
        key = batch_key_for(path.stem)
        before = chosen.get(key)
        if before is None or _rank(path) < _rank(before):
            chosen[key] = path
    return {key: chosen[key] for key in sorted(chosen) if chosen[key].is_file()}


def csv_for_partition(folder: Path, key: str) -> Path | None:
    """The batch file in ``folder`` whose batch key is ``key`` (keys are escaped file stems)."""
    for suffix in BATCH_SUFFIXES:
        direct = folder / f"{key}{suffix}"
        if direct.is_file():
            return direct
    return batch_files(folder).get(key)


def _rank(path: Path) -> int:
    return _PREFERENCE[path.suffix.lower()]

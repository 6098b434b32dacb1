"""The prompts-folder sensor: new or edited batch files (CSV, XLSX, XLS) become partitions
and runs.

Its first evaluation (no cursor yet: a new instance, or ``dagster dev`` started on a
folder the CLI already ran) asks the history which files are done: a file each of whose
rows already has a record gets its partition but no run. Re-running it would pay nothing,
yet it would replace the partition's latest materialization with a run that did nothing.
Failed rows count as done here: sending them again is the user's call (Materialize).
After that first look, an edited file runs again, as it always did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import dagster as dg

from ideogram_pipeline.defs.batches.jobs import batch_job
from ideogram_pipeline.defs.batches.partitions import (
    BATCH_PARTITIONS,
    batch_files,
    batch_partitions,
)
from ideogram_pipeline.defs.resources import (
    PipelineSettingsResource,
    StorageResource,
    prompts_dir,
)

__all__ = ["prompts_sensor"]


#: A file modified this recently is hashed even when its size and time look unchanged: an
#: edit within the file system's timestamp granularity must not go unseen ("racily clean").
RACY_SECONDS = 2.0


def _load_cursor(cursor: str | None) -> dict[str, list[Any]]:
    """``{batch key: [content digest, size, mtime_ns]}``; older cursors held digests only."""
    if not cursor:
        return {}
    data = json.loads(cursor)
    if isinstance(data, dict) and data.get("v") == 2:
        return dict(data["files"])
    return {key: [digest, None, None] for key, digest in data.items()}  # version 1


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _already_recorded(
    files: dict[str, Path],
    pipeline: PipelineSettingsResource,
    storage: StorageResource,
    log: logging.Logger,
) -> set[str]:
    """The batch keys among ``files`` whose every row (by its key: its content and
    occurrence) has a record in the history.

    One history query for all of them. When the history cannot be read (no storage yet,
    a bad setting, an unmigrated root), none is: the runs are requested as before and fail,
    or pay nothing, where the UI shows it.
    """
    from ideogram_pipeline.batches.files import BatchFileError, load_batch
    from ideogram_pipeline.history.batch_audit import recorded_row_keys
    from ideogram_pipeline.history.row_keys import row_keys

    try:
        settings = storage.resolve(pipeline.settings())
        recorded = recorded_row_keys(settings, storage.open(settings), list(files))
    except Exception as exc:
        log.warning(f"history not read, every new file runs: {type(exc).__name__}: {exc}")
        return set()
    done: set[str] = set()
    for key, path in files.items():
        if key not in recorded:
            continue
        try:
            # By content, not line: an edited file of as many rows is new work.
            keys = set(row_keys(load_batch(path, key=key).rows).values())
        except BatchFileError:
            continue  # its run will fail and say why
        if keys <= recorded[key]:
            done.add(key)
    return done


@dg.sensor(
    job=batch_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def prompts_sensor(
    context: dg.SensorEvaluationContext,
    pipeline: PipelineSettingsResource,
    storage: StorageResource,
) -> dg.SensorResult:
    """Adds a partition for each new batch file and requests a run for each new or edited file.

    The run key is the batch key plus the file's content hash, so an unchanged file never
    runs twice and an edited one runs again (paying only for rows not yet done).

    A tick reads only files whose size or modification time changed since the cursor was
    written (plus any modified in the last seconds): with thousands of batch files a tick
    is a directory listing, one ``stat`` per file and one partition query, and all new
    partitions are added in one request.

    On the first evaluation (no cursor), a file whose batch already has a record for every
    row (run from the CLI, or by an earlier instance) gets its partition and no run.
    """
    seen = _load_cursor(context.cursor)
    folder = prompts_dir()
    existing = set(context.instance.get_dynamic_partitions(BATCH_PARTITIONS))
    new_partitions: list[str] = []
    to_run: dict[str, tuple[Path, str]] = {}
    now = time.time()
    for key, path in batch_files(folder).items():
        if key not in existing:
            new_partitions.append(key)
            existing.add(key)
        stat = path.stat()
        before = seen.get(key)
        unchanged = (
            before is not None
            and before[1:] == [stat.st_size, stat.st_mtime_ns]
            and now - stat.st_mtime >= RACY_SECONDS
        )
        if unchanged:
            continue
        digest = _digest(path)
        seen[key] = [digest, stat.st_size, stat.st_mtime_ns]
        if before is not None and before[0] == digest:
            continue  # touched, not changed
        to_run[key] = (path, digest)
    if not context.cursor and to_run:
        done = _already_recorded(
            {key: path for key, (path, _) in to_run.items()}, pipeline, storage, context.log
        )
        for key in sorted(done):
            context.log.info(f"batch {key}: every row already has a record; no run requested")
            del to_run[key]
    run_requests = [
        dg.RunRequest(
            partition_key=key,
            run_key=f"{key}:{digest[:16]}",
            run_config={"ops": {"batch_images": {"config": {"csv_path": str(path)}}}},
        )
        for key, (path, digest) in to_run.items()
    ]
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [batch_partitions.build_add_request(new_partitions)] if new_partitions else []
        ),
        cursor=json.dumps({"v": 2, "files": seen}, sort_keys=True, separators=(",", ":")),
    )

"""The prompts-folder sensor: new or edited CSV files become partitions and runs."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import dagster as dg

from ideogram_pipeline.defs.partitions import batch_partitions
from ideogram_pipeline.defs.resources import prompts_dir
from ideogram_pipeline.storage.keys import batch_key_for

__all__ = ["batch_job", "prompts_sensor"]

batch_job = dg.define_asset_job(
    "batch_job", selection="batch_images", partitions_def=batch_partitions
)


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


@dg.sensor(
    job=batch_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def prompts_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Adds a partition for each new CSV and requests a run for each new or edited file.

    The run key is the batch key plus the file's content hash, so an unchanged file never
    runs twice and an edited one runs again (paying only for rows not yet done).

    A tick reads only files whose size or modification time changed since the cursor was
    written (plus any modified in the last seconds): with thousands of batch files a tick
    is a directory listing, one ``stat`` per file and one partition query, and all new
    partitions are added in one request.
    """
    seen = _load_cursor(context.cursor)
    folder = prompts_dir()
    existing = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    new_partitions: list[str] = []
    run_requests: list[dg.RunRequest] = []
    now = time.time()
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        key = batch_key_for(path.stem)
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
        run_requests.append(
            dg.RunRequest(
                partition_key=key,
                run_key=f"{key}:{digest[:16]}",
                run_config={"ops": {"batch_images": {"config": {"csv_path": str(path)}}}},
            )
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [batch_partitions.build_add_request(new_partitions)] if new_partitions else []
        ),
        cursor=json.dumps({"v": 2, "files": seen}, sort_keys=True, separators=(",", ":")),
    )

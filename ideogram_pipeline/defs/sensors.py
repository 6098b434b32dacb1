"""The prompts-folder sensor: new or edited CSV files become partitions and runs."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from ideogram_pipeline.defs.partitions import batch_partitions
from ideogram_pipeline.defs.resources import prompts_dir
from ideogram_pipeline.keys import batch_key_for

__all__ = ["batch_job", "prompts_sensor"]

batch_job = dg.define_asset_job(
    "batch_job", selection="batch_images", partitions_def=batch_partitions
)


@dg.sensor(
    job=batch_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def prompts_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Adds a partition for each new CSV and requests a run for each new or edited file.

    The run key is the batch key plus the file's content hash, so an unchanged file never
    runs twice and an edited one runs again (paying only for rows not yet done).
    """
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    folder = prompts_dir()
    existing = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    new_partitions: list[str] = []
    run_requests: list[dg.RunRequest] = []
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        key = batch_key_for(path.stem)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if key not in existing:
            new_partitions.append(key)
            existing.add(key)
        if seen.get(key) == digest:
            continue
        seen[key] = digest
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
        cursor=json.dumps(seen, sort_keys=True),
    )

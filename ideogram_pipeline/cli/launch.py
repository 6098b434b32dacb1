"""Materialize one batch through Dagster from the command line.

The run is recorded in the Dagster instance under ``DAGSTER_HOME`` (the CLI picks
``./.dagster`` when it is unset), exactly as if launched from the UI.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.event_log import SqliteEventLogStorage

from ideogram_pipeline.defs.batches.assets import batch_images
from ideogram_pipeline.defs.batches.metadata import RUN_PREFIX
from ideogram_pipeline.defs.batches.partitions import BATCH_PARTITIONS
from ideogram_pipeline.defs.resources import build_resources

__all__ = ["LaunchResult", "materialize_batch", "open_instance"]

#: The job a CLI run is recorded under: the name `dg.materialize` gives its own, as before.
BATCH_JOB_NAME = "__ephemeral_asset_job__"


@dataclass(frozen=True)
class LaunchResult:
    success: bool
    run_id: str
    metadata: dict[str, Any]
    error: str | None
    #: Stopped by SIGINT/SIGTERM and recorded CANCELED: rows are left for the next run.
    canceled: bool = False


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _summary(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata as the CLI prints it: this run's counts under their plain names
    (``run_stored`` is "stored"); the batch's totals (``batch_*``) keep theirs."""
    return {key.removeprefix(RUN_PREFIX): _plain(value) for key, value in metadata.items()}


def open_instance() -> dg.DagsterInstance:
    """The instance under DAGSTER_HOME, opened under a file lock: two CLI runs starting at
    once against a new SQLite instance would otherwise both try to create its tables."""
    lock_path = Path(os.environ["DAGSTER_HOME"]) / ".ideogram-pipeline.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            instance = dg.DagsterInstance.get()
            _finish_event_index(instance)
            return instance
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _finish_event_index(instance: dg.DagsterInstance) -> None:
    """Finish a SQLite event index whose creation a kill cut short.

    Dagster creates ``history/runs/index.db`` table by table, stamps its schema version
    last, and checks the file only when it is missing: after a run killed in between (its
    first seconds on a new DAGSTER_HOME), every later run stored its rows but failed to
    record its Dagster run ("requires the dynamic partitions table"). Dagster's first
    connection to the index checks the stamp and creates what is missing; on a whole
    index it finds the stamp and changes nothing.
    """
    storage = instance.event_log_storage
    if isinstance(storage, SqliteEventLogStorage):
        with storage.index_connection():
            pass


def materialize_batch(
    csv_path: Path,
    key: str,
    config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
    resources: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> LaunchResult:
    """``config``: further ``BatchConfig`` fields for this run (e.g. ``max_cost_usd``);
    ``instance``: the one to record in (a job's op passes its own), else DAGSTER_HOME's;
    ``resources``: the batch asset's (a job's op passes its own), else the environment's;
    ``run_id``: the run's id when the batch was started before it (``runs/handoff.py``)."""
    instance = instance or open_instance()
    if not instance.has_dynamic_partition(BATCH_PARTITIONS, key):
        instance.add_dynamic_partitions(BATCH_PARTITIONS, [key])
    # What `dg.materialize` builds, which takes no run id: one job of the batch asset.
    defs = dg.Definitions(
        jobs=[dg.define_asset_job(name=BATCH_JOB_NAME)],
        assets=[batch_images],
        resources=dict(resources) if resources is not None else build_resources(),
    )
    result = defs.resolve_job_def(BATCH_JOB_NAME).execute_in_process(
        run_config={
            "ops": {"batch_images": {"config": {"csv_path": str(csv_path), **(config or {})}}},
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
        },
        instance=instance,
        partition_key=key,
        raise_on_error=False,
        run_id=run_id,
    )
    metadata: dict[str, Any] = {}
    for event in result.get_asset_materialization_events():
        metadata = _summary(event.materialization.metadata)
    run = instance.get_run_by_id(result.run_id)
    if run is not None and run.status == dg.DagsterRunStatus.CANCELED:
        # A clean stop: the asset observed what the run did before the run was canceled.
        for event in result.get_asset_observation_events():
            observed = event.asset_observation_data.asset_observation.metadata
            if "stopped" in observed:
                metadata = _summary(observed)
        stopped = metadata.pop("stopped", None)
        return LaunchResult(False, result.run_id, metadata, stopped or "run canceled", True)
    error = None
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data is not None:
                error_info = event.step_failure_data.error
                error = error_info.message.strip() if error_info else "the batch step failed"
                user_failure = event.step_failure_data.user_failure_data
                if user_failure is not None:
                    error = (user_failure.description or error).strip()
                    metadata = _summary(user_failure.metadata)
        error = error or "the Dagster run failed"
    return LaunchResult(result.success, result.run_id, metadata, error)

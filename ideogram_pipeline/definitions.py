"""The Dagster code location (``workspace.yaml`` and ``dagster dev`` load this)."""

from __future__ import annotations

import dagster as dg

from ideogram_pipeline.defs.assets import batch_images
from ideogram_pipeline.defs.lifecycle import (
    generation_history,
    history_checks,
    metadata_compaction,
    retention_cleanup,
    usage_report,
)
from ideogram_pipeline.defs.lifecycle_schedules import lifecycle_jobs, lifecycle_schedules
from ideogram_pipeline.defs.resources import build_resources
from ideogram_pipeline.defs.sensors import batch_job, prompts_sensor

defs = dg.Definitions(
    assets=[
        batch_images,
        generation_history,
        usage_report,
        retention_cleanup,
        metadata_compaction,
    ],
    asset_checks=history_checks,
    jobs=[batch_job, *lifecycle_jobs],
    schedules=lifecycle_schedules,
    sensors=[prompts_sensor],
    resources=build_resources(),
)

"""The Dagster code location (``workspace.yaml`` and ``dagster dev`` load this)."""

from __future__ import annotations

import dagster as dg

from ideogram_pipeline.defs.assets import batch_images
from ideogram_pipeline.defs.resources import build_resources
from ideogram_pipeline.defs.sensors import batch_job, prompts_sensor

defs = dg.Definitions(
    assets=[batch_images],
    jobs=[batch_job],
    sensors=[prompts_sensor],
    resources=build_resources(),
)

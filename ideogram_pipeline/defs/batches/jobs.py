"""The batch job: one partition of ``batch_images`` per run (the sensor launches it)."""

import dagster as dg

from ideogram_pipeline.defs.batches.assets import batch_images
from ideogram_pipeline.defs.batches.partitions import batch_partitions

__all__ = ["batch_job"]

batch_job = dg.define_asset_job(
    "batch_job", selection=[batch_images], partitions_def=batch_partitions
)

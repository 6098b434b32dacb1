"""The lifecycle jobs the daily schedules launch (each can be launched by hand too)."""

import dagster as dg

from ideogram_pipeline.defs.lifecycle.assets import generation_history, usage_report
from ideogram_pipeline.defs.lifecycle.ops import metadata_compaction, retention_cleanup

__all__ = ["metadata_compaction_job", "retention_cleanup_job", "usage_report_job"]


@dg.job(description="Delete images and metadata rows past their retention (retention.toml).")
def retention_cleanup_job() -> None:
    retention_cleanup()


@dg.job(description="Compact the history tables (Delta OPTIMIZE), partition by partition.")
def metadata_compaction_job() -> None:
    metadata_compaction()


usage_report_job = dg.define_asset_job(
    "usage_report_job",
    selection=dg.AssetSelection.assets(generation_history, usage_report),
    description="Summarise and check the history, then write the usage and cost report.",
)

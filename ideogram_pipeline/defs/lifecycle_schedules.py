"""Lifecycle jobs and their daily schedules (cron strings from ``retention.toml`` or
``IDEOGRAM_CLEANUP_CRON`` / ``IDEOGRAM_COMPACTION_CRON`` / ``IDEOGRAM_REPORT_CRON``).

The crons are read when the code location loads, as Dagster needs them to build the
schedules. A broken config file does not take the code location down: the schedules fall
back to the default times and the runs themselves fail with the config error, where it
shows in the UI.
"""

import logging
import os

import dagster as dg

from ideogram_pipeline.defs.lifecycle import (
    generation_history,
    metadata_compaction,
    retention_cleanup,
    usage_report,
)
from ideogram_pipeline.lifecycle.policy import (
    LifecycleConfig,
    LifecycleError,
    load_lifecycle_config,
)

__all__ = [
    "lifecycle_jobs",
    "lifecycle_schedules",
    "metadata_compaction_job",
    "retention_cleanup_job",
    "usage_report_job",
]

log = logging.getLogger(__name__)

retention_cleanup_job = dg.define_asset_job(
    "retention_cleanup_job",
    selection=dg.AssetSelection.assets(retention_cleanup),
    description="Delete images and metadata rows past their retention (retention.toml).",
)
metadata_compaction_job = dg.define_asset_job(
    "metadata_compaction_job",
    selection=dg.AssetSelection.assets(metadata_compaction),
    description="Compact the history tables (Delta OPTIMIZE), partition by partition.",
)
usage_report_job = dg.define_asset_job(
    "usage_report_job",
    selection=dg.AssetSelection.assets(generation_history, usage_report),
    description="Summarise and check the history, then write the usage and cost report.",
)
lifecycle_jobs = [retention_cleanup_job, metadata_compaction_job, usage_report_job]


def _config() -> LifecycleConfig:
    try:
        return load_lifecycle_config(os.environ)
    except LifecycleError as exc:
        log.warning("lifecycle schedules use default times: %s", exc)
        return LifecycleConfig()


def build_lifecycle_schedules(config: LifecycleConfig | None = None) -> list[dg.ScheduleDefinition]:
    """Daily cleanup, compaction and report, in UTC, running by default."""
    config = config or _config()
    return [
        dg.ScheduleDefinition(
            name="retention_cleanup_schedule",
            job=retention_cleanup_job,
            cron_schedule=config.cleanup_cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Daily retention cleanup by the policy in retention.toml.",
        ),
        dg.ScheduleDefinition(
            name="metadata_compaction_schedule",
            job=metadata_compaction_job,
            cron_schedule=config.compaction_cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Daily compaction of the history tables.",
        ),
        dg.ScheduleDefinition(
            name="usage_report_schedule",
            job=usage_report_job,
            cron_schedule=config.report_cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Daily usage and cost report of the last 30 days.",
        ),
    ]


lifecycle_schedules = build_lifecycle_schedules()

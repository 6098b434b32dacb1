"""The daily lifecycle schedules: cleanup, compaction and the usage report, in UTC.

Dagster needs a schedule's cron when the code location loads, and loading reads no file:
the times are fixed here, and ``IDEOGRAM_CLEANUP_CRON`` / ``IDEOGRAM_COMPACTION_CRON`` /
``IDEOGRAM_REPORT_CRON`` move them (the environment of the process that loads the code
location: the webserver's and the daemon's). A value that is not a five-field cron does
not take the code location down: that schedule keeps its default time and a warning is
logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from ideogram_pipeline.defs.lifecycle.jobs import (
    metadata_compaction_job,
    retention_cleanup_job,
    usage_report_job,
)

__all__ = [
    "ScheduleTimes",
    "build_lifecycle_schedules",
    "metadata_compaction_schedule",
    "retention_cleanup_schedule",
    "usage_report_schedule",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleTimes:
    """UTC crons of the three daily schedules."""

    cleanup: str = "0 3 * * *"
    compaction: str = "30 3 * * *"
    report: str = "0 6 * * *"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ScheduleTimes:
        defaults = cls()

        def cron(name: str, default: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                return default
            if len(value.split()) != 5:
                log.warning("%s=%r is not a five-field cron; using %r", name, value, default)
                return default
            return value

        return cls(
            cleanup=cron("IDEOGRAM_CLEANUP_CRON", defaults.cleanup),
            compaction=cron("IDEOGRAM_COMPACTION_CRON", defaults.compaction),
            report=cron("IDEOGRAM_REPORT_CRON", defaults.report),
        )


def _daily(
    name: str,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    cron: str,
    description: str,
) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )


def build_lifecycle_schedules(times: ScheduleTimes) -> list[dg.ScheduleDefinition]:
    """Daily cleanup, compaction and report, in UTC, running by default."""
    return [
        _daily(
            "retention_cleanup_schedule",
            retention_cleanup_job,
            times.cleanup,
            "Daily retention cleanup by the policy in retention.toml.",
        ),
        _daily(
            "metadata_compaction_schedule",
            metadata_compaction_job,
            times.compaction,
            "Daily compaction of the history tables.",
        ),
        _daily(
            "usage_report_schedule",
            usage_report_job,
            times.report,
            "Daily usage and cost report of the last 30 days.",
        ),
    ]


retention_cleanup_schedule, metadata_compaction_schedule, usage_report_schedule = (
    build_lifecycle_schedules(ScheduleTimes.from_env(os.environ))
)

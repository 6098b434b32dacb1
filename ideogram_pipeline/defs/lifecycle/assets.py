"""The lifecycle's assets: the history tables as they stand, and the usage report.

Thin wrappers: the work is in ``history/health.py`` and ``reports/``; these assets read
config and resources, call it, and put what a person wants to see into materialization
metadata. The work modules (DuckDB, pyarrow, pandas, matplotlib) are imported inside the
assets that run them, so loading the code location stays fast.
"""

from datetime import date

import dagster as dg

from ideogram_pipeline.defs.lifecycle.common import GROUP, lifecycle_config, open_root
from ideogram_pipeline.defs.resources import PipelineSettingsResource, StorageResource

__all__ = ["ReportConfig", "generation_history", "usage_report"]


@dg.asset(group_name=GROUP, kinds={"parquet", "duckdb"}, deps=["batch_images"])
def generation_history(
    pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.MaterializeResult[None]:
    """The history tables as they stand: records by status, files, bytes, date span, pins.

    Materializing it observes the Delta tables (nothing is written) and runs its checks.
    """
    from ideogram_pipeline.history import health as history_health

    settings, store = open_root(pipeline, storage)
    summary = history_health.summarise(settings, store)
    return dg.MaterializeResult(
        metadata={
            "records": summary["records"],
            "record_versions": summary["record_versions"],
            "current_rows": summary["current_rows"],
            "by_status": dg.MetadataValue.json(summary["by_status"]),
            "partitions": summary["partitions"],
            "batches": summary["batches"],
            "metadata_files": summary["metadata_files"],
            "metadata_bytes": summary["metadata_bytes"],
            "image_bytes": summary["image_bytes"],
            "oldest": summary["oldest"] or "",
            "newest": summary["newest"] or "",
            "pinned": summary["pinned"],
            "storage_root": dg.MetadataValue.path(store.root),
        }
    )


class ReportConfig(dg.Config):
    """The report's window of UTC days; empty means the last 30 days up to today."""

    since: str = ""
    until: str = ""


def _day(value: str, name: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise dg.Failure(f"{name} must be a date like 2025-01-31, got {value!r}") from None


@dg.asset(group_name=GROUP, kinds={"python", "markdown"}, deps=[generation_history])
def usage_report(
    config: ReportConfig, pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.MaterializeResult[None]:
    """Usage and cost report: images and cost by day, model, speed, style and batch; status
    mix and top errors; storage growth; latency; spend against the monthly budget.

    Written as Markdown, PNG charts and CSV under ``reports/`` in the storage root.
    """
    from ideogram_pipeline.reports.rendering import write_report
    from ideogram_pipeline.reports.usage import build_report

    settings, store = open_root(pipeline, storage)
    report = build_report(
        settings,
        store,
        _day(config.since, "since"),
        _day(config.until, "until"),
        monthly_budget_usd=lifecycle_config().monthly_budget_usd,
    )
    files = write_report(report, store)
    t = report.totals
    return dg.MaterializeResult(
        metadata={
            "window": f"{report.since} to {report.until}",
            "records": t["records"],
            "images": t["images"],
            "cost_usd": dg.MetadataValue.float(round(t["cost_usd"], 4)),
            "budget": dg.MetadataValue.json(report.budget),
            "report": dg.MetadataValue.path(store.uri(files.keys[0])),
            "report_markdown": dg.MetadataValue.md(files.embedded_markdown()),
        }
    )

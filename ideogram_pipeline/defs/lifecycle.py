"""Lifecycle assets and checks: the history, its usage report, retention and compaction.

Thin wrappers: the work is in ``retention.py``, ``orphans.py``, ``compaction.py``,
``reports.py`` and ``history_health.py``; these assets read config and resources, call
them, and put what a person wants to see into materialization metadata.
"""

import os
from datetime import date
from typing import TYPE_CHECKING, Any

import dagster as dg

from ideogram_pipeline.defs.resources import PipelineSettingsResource, StorageResource
from ideogram_pipeline.lifecycle.policy import LifecycleError, load_lifecycle_config, parse_as_of
from ideogram_pipeline.settings import Settings, SettingsError

# The work modules (DuckDB, pyarrow, pandas, matplotlib) are imported inside the assets
# that run them, so loading the code location stays fast.
if TYPE_CHECKING:
    from ideogram_pipeline.history import health as history_health
from ideogram_pipeline.storage import StorageError

__all__ = [
    "CleanupConfig",
    "CompactionConfig",
    "ReportConfig",
    "generation_history",
    "history_checks",
    "metadata_compaction",
    "retention_cleanup",
    "usage_report",
]

GROUP = "lifecycle"


def _open(pipeline: PipelineSettingsResource, storage: StorageResource) -> tuple[Settings, Any]:
    try:
        settings = storage.resolve(pipeline.settings())
        return settings, storage.open(settings)
    except (SettingsError, StorageError) as exc:
        raise dg.Failure(str(exc)) from None


def _config() -> Any:
    try:
        return load_lifecycle_config(os.environ)
    except LifecycleError as exc:
        raise dg.Failure(str(exc)) from None


@dg.asset(group_name=GROUP, kinds={"parquet", "duckdb"}, deps=["batch_images"])
def generation_history(
    pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.MaterializeResult:
    """The history tables as they stand: records by status, files, bytes, date span, pins.

    Materializing it observes the Delta tables (nothing is written) and runs its checks.
    """
    from ideogram_pipeline.history import health as history_health

    settings, store = _open(pipeline, storage)
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


def _check_result(outcome: "history_health.CheckOutcome") -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.passed,
        metadata={
            "failures": outcome.failures,
            "what": outcome.description,
            "examples": dg.MetadataValue.json(outcome.examples),
        },
    )


@dg.asset_check(
    asset=generation_history, description="Every stored row's object exists, same size."
)
def stored_objects_match(
    pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.AssetCheckResult:
    from ideogram_pipeline.lifecycle.orphans import verify_stored_objects

    settings, store = _open(pipeline, storage)
    result = verify_stored_objects(settings, store)
    return dg.AssetCheckResult(
        passed=result.ok,
        metadata={
            "checked": result.checked,
            "stored_records": result.total,
            "sampled": result.checked < result.total,
            "missing": dg.MetadataValue.json(result.missing[:20]),
            "wrong_size": dg.MetadataValue.json(result.wrong_size[:20]),
        },
    )


@dg.asset_check(
    asset=generation_history, description="No two different rows share an id or a row key."
)
def ids_unique(pipeline: PipelineSettingsResource, storage: StorageResource) -> dg.AssetCheckResult:
    from ideogram_pipeline.history import health as history_health

    return _check_result(history_health.ids_unique(*_open(pipeline, storage)))


@dg.asset_check(asset=generation_history, description="Every record has a status.")
def status_present(
    pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.AssetCheckResult:
    from ideogram_pipeline.history import health as history_health

    return _check_result(history_health.status_present(*_open(pipeline, storage)))


@dg.asset_check(asset=generation_history, description="No record has a negative cost.")
def cost_non_negative(
    pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.AssetCheckResult:
    from ideogram_pipeline.history import health as history_health

    return _check_result(history_health.cost_non_negative(*_open(pipeline, storage)))


history_checks = [stored_objects_match, ids_unique, status_present, cost_non_negative]


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
) -> dg.MaterializeResult:
    """Usage and cost report: images and cost by day, model, speed, style and batch; status
    mix and top errors; storage growth; latency; spend against the monthly budget.

    Written as Markdown, PNG charts and CSV under ``reports/`` in the storage root.
    """
    from ideogram_pipeline.reports.rendering import write_report
    from ideogram_pipeline.reports.usage import build_report

    settings, store = _open(pipeline, storage)
    report = build_report(
        settings,
        store,
        _day(config.since, "since"),
        _day(config.until, "until"),
        monthly_budget_usd=_config().monthly_budget_usd,
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


class CleanupConfig(dg.Config):
    """Retention comes from retention.toml; these override it for one run."""

    dry_run: bool = False
    older_than_days: float | None = None  # the default retention for this run
    as_of: str = ""  # judge ages as of this date or time (UTC); empty: now


@dg.asset(group_name=GROUP, kinds={"python", "s3"}, deps=[generation_history])
def retention_cleanup(
    context: dg.AssetExecutionContext,
    config: CleanupConfig,
    pipeline: PipelineSettingsResource,
    storage: StorageResource,
) -> dg.MaterializeResult:
    """Images and rows past their retention, deleted (keep-tagged and pinned ones stay).

    Usage is rolled up for reports before anything goes; then the objects, a DELETE on both
    history tables and a vacuum; an audit record last. Each step is one atomic commit or
    idempotent, so a run killed anywhere is finished by the next.
    """
    from ideogram_pipeline.lifecycle.retention import run_cleanup
    from ideogram_pipeline.reports.rendering import human_bytes

    settings, store = _open(pipeline, storage)
    policy = _config().retention.with_default(config.older_than_days)
    try:
        result = run_cleanup(
            settings,
            store,
            policy,
            parse_as_of(config.as_of),
            dry_run=config.dry_run,
            reason="scheduled cleanup"
            if context.run.tags.get("dagster/schedule_name")
            else "dagster run",
            by=f"dagster:{context.run_id}",
        )
    except (LifecycleError, StorageError) as exc:
        raise dg.Failure(str(exc)) from None
    plan = result.plan
    counted = "records_to_delete" if config.dry_run else "records_deleted"
    audit = store.uri(result.audit_key) if result.audit_key else ""
    return dg.MaterializeResult(
        metadata={
            "dry_run": config.dry_run,
            counted: plan.count,
            "images": len(plan.objects),
            "bytes": plan.bytes,
            "size": human_bytes(plan.bytes),
            "oldest": plan.oldest.isoformat() if plan.oldest else "",
            "newest": plan.newest.isoformat() if plan.newest else "",
            "partitions_dropped": plan.whole_partitions,
            "partitions_rewritten": len(plan.partitions) - plan.whole_partitions,
            "kept_meanwhile": dg.MetadataValue.json(result.kept_meanwhile),
            "policy": plan.policy.describe(),
            "as_of": plan.as_of.isoformat(),
            "resumed_cleanups": dg.MetadataValue.json(result.resumed),
            "audit": dg.MetadataValue.path(audit) if audit else "(dry run: none)",
        }
    )


class CompactionConfig(dg.Config):
    """Empty: retention.toml's [compaction] target_file_mb (128 by default)."""

    target_file_mb: float | None = None


@dg.asset(group_name=GROUP, kinds={"parquet"}, deps=[generation_history])
def metadata_compaction(
    config: CompactionConfig, pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.MaterializeResult:
    """The history tables with each partition's small files merged into few large ones
    (Delta's OPTIMIZE, then a vacuum of the replaced files).

    Query results never change: the merged files are one atomic commit.
    """
    from ideogram_pipeline.lifecycle.compaction import compact

    settings, store = _open(pipeline, storage)
    target = config.target_file_mb or _config().target_file_mb
    try:
        result = compact(settings, target_bytes=int(target * 1024 * 1024))
    except (LifecycleError, StorageError) as exc:
        raise dg.Failure(str(exc)) from None
    return dg.MaterializeResult(
        metadata={
            **result.as_dict(),
            "tables": dg.MetadataValue.json(result.tables),
            "target_file_mb": target,
            "storage_root": dg.MetadataValue.path(store.root),
        }
    )

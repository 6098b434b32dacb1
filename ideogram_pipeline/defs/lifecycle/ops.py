"""Maintenance that produces no data set of its own: retention cleanup and compaction.

They change the history tables in place (delete expired rows, merge small files), so they
are ops in jobs, not assets: materializing "retention_cleanup" would claim a data set that
does not exist. Each op's output metadata says what it did (the run's page shows it), and
its config keeps the op's name, so run config written for the old assets still applies:
``{"ops": {"retention_cleanup": {"config": {...}}}}``.
"""

import dagster as dg

from ideogram_pipeline.defs.lifecycle.common import lifecycle_config, open_root
from ideogram_pipeline.defs.resources import PipelineSettingsResource, StorageResource
from ideogram_pipeline.lifecycle.policy import LifecycleError, parse_as_of
from ideogram_pipeline.storage import StorageError

__all__ = ["CleanupConfig", "CompactionConfig", "metadata_compaction", "retention_cleanup"]


class CleanupConfig(dg.Config):
    """Retention comes from retention.toml; these override it for one run."""

    dry_run: bool = False
    older_than_days: float | None = None  # the default retention for this run
    as_of: str = ""  # judge ages as of this date or time (UTC); empty: now


@dg.op
def retention_cleanup(
    context: dg.OpExecutionContext,
    config: CleanupConfig,
    pipeline: PipelineSettingsResource,
    storage: StorageResource,
) -> dg.Output[None]:
    """Delete images and rows past their retention (keep-tagged and pinned ones stay).

    Usage is rolled up for reports before anything goes; then the objects, a DELETE on both
    history tables and a vacuum; an audit record last. Each step is one atomic commit or
    idempotent, so a run killed anywhere is finished by the next.
    """
    from ideogram_pipeline.lifecycle.retention import run_cleanup
    from ideogram_pipeline.reports.rendering import human_bytes

    settings, store = open_root(pipeline, storage)
    policy = lifecycle_config().retention.with_default(config.older_than_days)
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
    return dg.Output(
        None,
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
        },
    )


class CompactionConfig(dg.Config):
    """Empty: retention.toml's [compaction] target_file_mb (128 by default)."""

    target_file_mb: float | None = None


@dg.op
def metadata_compaction(
    config: CompactionConfig, pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.Output[None]:
    """Merge each partition's small files of the history tables into few large ones
    (Delta's OPTIMIZE, then a vacuum of the replaced files).

    Query results never change: the merged files are one atomic commit.
    """
    from ideogram_pipeline.lifecycle.compaction import compact

    settings, store = open_root(pipeline, storage)
    target = config.target_file_mb or lifecycle_config().target_file_mb
    try:
        result = compact(settings, target_bytes=int(target * 1024 * 1024))
    except (LifecycleError, StorageError) as exc:
        raise dg.Failure(str(exc)) from None
    return dg.Output(
        None,
        metadata={
            **result.as_dict(),
            "tables": dg.MetadataValue.json(result.tables),
            "target_file_mb": target,
            "storage_root": dg.MetadataValue.path(store.root),
        },
    )

"""Checks of the whole history, run with ``generation_history`` (``usage_report_job``).

Cross-partition questions (every stored object exists, no id names two rows, every record
has a status and a cost that is not negative); the batch asset's own checks, about the
partition just written, are its ``check_specs`` (``defs/batches/checks.py``).
"""

from typing import TYPE_CHECKING

import dagster as dg

from ideogram_pipeline.defs.lifecycle.assets import generation_history
from ideogram_pipeline.defs.lifecycle.common import open_root
from ideogram_pipeline.defs.resources import PipelineSettingsResource, StorageResource

if TYPE_CHECKING:
    from ideogram_pipeline.history import health as history_health

__all__ = ["cost_non_negative", "ids_unique", "status_present", "stored_objects_match"]


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

    settings, store = open_root(pipeline, storage)
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

    return _check_result(history_health.ids_unique(*open_root(pipeline, storage)))


@dg.asset_check(asset=generation_history, description="Every record has a status.")
def status_present(
    pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.AssetCheckResult:
    from ideogram_pipeline.history import health as history_health

    return _check_result(history_health.status_present(*open_root(pipeline, storage)))


@dg.asset_check(asset=generation_history, description="No record has a negative cost.")
def cost_non_negative(
    pipeline: PipelineSettingsResource, storage: StorageResource
) -> dg.AssetCheckResult:
    from ideogram_pipeline.history import health as history_health

    return _check_result(history_health.cost_non_negative(*open_root(pipeline, storage)))

"""The batch asset: one partition per CSV file, one op per batch."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import dagster as dg
from pydantic import Field

from ideogram_pipeline.batches.files import BatchFileError, load_batch
from ideogram_pipeline.batches.overrides import (
    ModelChoice,
    OverrideError,
    RenderingSpeedChoice,
    RunOverrides,
    StyleTypeChoice,
    apply_overrides,
)
from ideogram_pipeline.defs.contact_sheets import contact_sheet_metadata
from ideogram_pipeline.defs.partitions import batch_partitions, csv_for_partition
from ideogram_pipeline.defs.resources import (
    PipelineSettingsResource,
    StorageResource,
    prompts_dir,
)
from ideogram_pipeline.safe_output import escape_markdown_cell
from ideogram_pipeline.settings import SettingsError
from ideogram_pipeline.storage import StorageError
from ideogram_pipeline.storage.keys import batch_key_for, is_safe_key

if TYPE_CHECKING:
    from ideogram_pipeline.runs.engine import BatchSummary

__all__ = ["BatchConfig", "batch_images"]

PROGRESS_EVERY_S = 2.0


class BatchConfig(dg.Config):
    """Launch settings of one batch run (the launchpad shows each field with its default).

    Enum fields are drop-downs: Dagster rejects any other value, naming the field, before
    the run starts. Overrides replace that field on every row and re-validate the row.
    """

    csv_path: str = Field(
        default="",
        description="CSV of the batch. Empty: the file in the prompts folder named by the "
        "partition.",
    )
    model: Optional[ModelChoice] = Field(  # noqa: UP045  (Dagster reads the annotation)
        default=None,
        description="Model for every row instead of the CSV's. A legacy model drops the rows' "
        "rendering speed (V_3 only).",
    )
    rendering_speed: Optional[RenderingSpeedChoice] = Field(  # noqa: UP045
        default=None,
        description="Rendering speed for every row (V_3 only; other models' rows are rejected).",
    )
    style_type: Optional[StyleTypeChoice] = Field(  # noqa: UP045
        default=None,
        description="Style type for every row; a row whose model does not take it is rejected.",
    )
    max_cost_usd: Optional[float] = Field(  # noqa: UP045
        default=None,
        description="Refuse the run, before sending anything, when the estimated cost of the "
        "rows to send is above this (USD).",
    )
    force: bool = Field(
        default=False,
        description="Generate rows whose exact request (explicit seed) is already stored in "
        "another batch, instead of linking them to the stored image at no cost.",
    )
    resend_unknown: bool = Field(
        default=False,
        description="Send again rows whose earlier request got no recorded answer (status "
        "unknown: the run stopped mid-request, so they may have been billed already).",
    )
    dry_run: bool = Field(
        default=False,
        description="Only estimate the cost (recorded as an observation); send nothing.",
    )

    def overrides(self) -> RunOverrides:
        return RunOverrides(
            model=self.model.value if self.model else None,
            rendering_speed=self.rendering_speed.value if self.rendering_speed else None,
            style_type=self.style_type.value if self.style_type else None,
        )


def _first_rows_markdown(summary: "BatchSummary") -> str:
    lines = ["| row | status | model | seed | prompt | stored |", "|---|---|---|---|---|---|"]
    for record in summary.first_records:
        prompt = escape_markdown_cell(record.prompt, limit=80)
        lines.append(
            f"| {record.row} | {record.status} | {record.model or ''} | "
            f"{record.seed or ''} | {prompt} | {record.stored_uri or ''} |"
        )
    return "\n".join(lines)


def summary_metadata(summary: "BatchSummary") -> dict[str, Any]:
    """What a person wants to see in the UI after a batch."""
    return {
        "mode": "SIMULATED (bundled simulator)" if summary.simulated else "Ideogram API",
        "rows": summary.rows,
        "stored": summary.stored,
        "unsafe": summary.unsafe,
        "rejected": summary.rejected,
        "failed": summary.failed,
        "skipped_already_done": summary.skipped,
        "linked_duplicates": summary.linked,
        "cost_usd": dg.MetadataValue.float(round(summary.cost_usd, 4)),
        "seconds": dg.MetadataValue.float(round(summary.seconds, 2)),
        "retries": dg.MetadataValue.json(dict(summary.retries)),
        "storage_root": dg.MetadataValue.path(summary.storage_root),
        "history_commits": len(summary.history_commits),
        "first_rows": dg.MetadataValue.md(_first_rows_markdown(summary)),
        **(
            {
                "estimated_cost_usd": dg.MetadataValue.float(
                    float(round(summary.estimated_cost_usd, 4))
                )
            }
            if summary.estimated_cost_usd is not None
            else {}
        ),
    }


@dg.asset(
    partitions_def=batch_partitions,
    group_name="generation",
    kinds={"python", "parquet"},
    # One slot per running batch: see dagster.yaml for how the pool relates to the account's
    # in-flight limit.
    pool="ideogram_account",
    output_required=False,  # a dry run records an observation, not a materialization
)
def batch_images(
    context: dg.AssetExecutionContext,
    config: BatchConfig,
    pipeline: PipelineSettingsResource,
    storage: StorageResource,
) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
    """Images generated by Ideogram for one CSV batch, stored with one metadata row each.

    Every CSV row ends as stored, unsafe, rejected or failed; re-materializing the partition
    pays only for rows not yet stored or unsafe.
    """
    # The engine (httpx, pyarrow, DuckDB, Pillow) is imported when a batch runs, not when
    # the code location loads: the UI, sensors and schedules never need it.
    from ideogram_pipeline.runs.cost_guard import CostLimitExceeded
    from ideogram_pipeline.runs.engine import BatchAborted, Progress
    from ideogram_pipeline.runs.runner import execute_batch

    key = context.partition_key
    if not is_safe_key(key):  # partitions can be added by hand in the UI: keys are paths
        raise dg.Failure(f"batch {key!r} is not a safe key; name it like {batch_key_for(key)!r}")
    path = Path(config.csv_path) if config.csv_path else csv_for_partition(prompts_dir(), key)
    if path is None:
        raise dg.Failure(f"no CSV for batch {key!r} in {prompts_dir()}")
    try:
        settings = storage.resolve(pipeline.settings())
        store = storage.open(settings)
        overrides = config.overrides()
        batch = apply_overrides(load_batch(path, key=key), overrides)
    except (BatchFileError, SettingsError, OverrideError) as exc:
        raise dg.Failure(str(exc)) from None

    last_report = 0.0

    def report(progress: Progress) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress.done_rows == progress.total_rows or now - last_report >= PROGRESS_EVERY_S:
            last_report = now
            s = progress.summary
            context.log.info(
                f"{progress.done_rows}/{progress.total_rows} rows: stored {s.stored}, "
                f"unsafe {s.unsafe}, rejected {s.rejected}, failed {s.failed}, "
                f"skipped {s.skipped}, "
                f"cost ${s.cost_usd:.2f}"
            )

    mode = "SIMULATED: bundled Ideogram simulator" if settings.simulated else "Ideogram API"
    context.log.info(f"batch {key}: {len(batch.rows)} rows from {path} ({mode})")
    if not overrides.empty:
        context.log.info(f"run overrides: {overrides.describe()}")
    try:
        summary = execute_batch(
            batch,
            settings,
            store=store,
            run_id=context.run_id[:12],
            progress=report,
            max_cost_usd=config.max_cost_usd,
            dry_run=config.dry_run,
            force=config.force,
            resend_unknown=config.resend_unknown,
        )
    except CostLimitExceeded as exc:
        raise dg.Failure(str(exc), metadata=exc.estimate.as_dict()) from None
    except BatchAborted as exc:
        raise dg.Failure(str(exc), metadata=summary_metadata(exc.summary)) from None
    except StorageError as exc:
        raise dg.Failure(f"storage {settings.storage}: {exc}") from None
    if summary.dry_run:
        context.log.info(f"dry run of batch {key}: nothing sent")
        yield dg.AssetObservation(
            asset_key=context.asset_key,
            partition=key,
            metadata={
                "dry_run": True,
                "estimated_cost_usd": dg.MetadataValue.float(summary.estimated_cost_usd or 0.0),
                "rows": summary.rows,
                "skipped_already_done": summary.skipped,
                "rejected": summary.rejected,
                "overrides": overrides.describe(),
            },
        )
        return
    sheet = contact_sheet_metadata(settings, store, key, context.run_id[:12], context.log)
    yield dg.MaterializeResult(metadata={**summary_metadata(summary), **sheet})

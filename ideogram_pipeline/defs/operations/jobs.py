"""``apply_operation``: an operation over images selected from the history, from the UI.

The op only turns the selection into a batch file (``batches/selections.py``) and
materializes that batch's partition of ``batch_images``, as ``ideogram-pipeline apply``
does: the run gets every guarantee, metadata and check of a batch, and shows as its own
run of the partition.
"""

from pathlib import Path

import dagster as dg

from ideogram_pipeline.defs.operations.config import ApplyConfig
from ideogram_pipeline.defs.resources import PipelineSettingsResource, StorageResource

__all__ = ["apply_operation", "apply_operation_job"]


@dg.op
def apply_operation(
    context: dg.OpExecutionContext,
    config: ApplyConfig,
    pipeline: PipelineSettingsResource,
    storage: StorageResource,
) -> dg.Output[None]:
    """Select the images, write their batch, and run it as a partition of batch_images."""
    from ideogram_pipeline.batches.selections import (
        OperationSelection,
        option_problem,
        select_images,
        write_selection,
    )
    from ideogram_pipeline.cli.launch import materialize_batch

    settings = storage.resolve(pipeline.settings())
    selection = OperationSelection(
        config.operation.value, config.where, config.prompt, config.settings()
    )
    try:
        ids = select_images(settings, config.where, storage.open(settings))
    except Exception as exc:  # the user's SQL: refused, failed or over its limits
        raise dg.Failure(f"where: {type(exc).__name__}: {exc}") from None
    if not ids:
        context.log.info(f"no stored image matches {config.where!r}; nothing to do")
        return dg.Output(None, metadata={"selected": 0})
    # Beside the instance's own files, as the CLI's apply writes them.
    home = Path(context.instance.root_directory)
    selected = write_selection(selection, ids, home / "selections")
    if problem := option_problem(selected):
        setting, reason = problem
        raise dg.Failure(f"{setting}: {reason}")
    context.log.info(f"{len(ids)} image(s) selected -> batch {selected.key}")
    batch_config: dict[str, object] = {"dry_run": config.dry_run}
    if config.max_cost_usd is not None:
        batch_config["max_cost_usd"] = config.max_cost_usd
    result = materialize_batch(selected.path, selected.key, batch_config, context.instance)
    if not result.success:
        raise dg.Failure(f"batch {selected.key}: {result.error}")
    return dg.Output(
        None,
        metadata={
            "selected": len(ids),
            "batch": selected.key,
            "batch_run": result.run_id,
            **{k: v for k, v in result.metadata.items() if isinstance(v, int | float | str)},
        },
    )


@dg.job(description="Run an operation (upscale, describe, ...) over a selection of images.")
def apply_operation_job() -> None:
    apply_operation()

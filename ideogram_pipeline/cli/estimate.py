"""``run --dry-run``: the cost estimate of a batch, printed without sending anything.

A dry run is plain Python (no Dagster run is recorded: nothing happened to record). It reads
the storage root's history and the batch's ledger so rows already stored or unsafe, rows
linked to identical images and rows a killed run already paid for are left out, exactly as
a real run would skip them (``runs/will_send.py``).
"""

from __future__ import annotations

from pathlib import Path

import click

from ideogram_pipeline.cli.common import settings_or_exit

__all__ = ["print_estimate"]


def print_estimate(csv: Path, batch: str | None, max_cost: float | None) -> None:
    """Print what running ``csv`` would cost; fail when it is above ``max_cost``."""
    from ideogram_pipeline.batches.files import BatchFileError, load_batch
    from ideogram_pipeline.runs.cost_guard import CostLimitExceeded, check_budget
    from ideogram_pipeline.runs.runner import estimate_batch
    from ideogram_pipeline.storage import StorageError
    from ideogram_pipeline.storage.keys import batch_key_from

    settings = settings_or_exit()
    key = batch_key_from(batch, csv.stem)
    try:
        loaded = load_batch(csv, key=key)
        estimate = estimate_batch(loaded, settings)
    except BatchFileError as exc:
        raise click.ClickException(str(exc)) from None
    except StorageError as exc:
        raise click.ClickException(f"storage {settings.storage}: {exc}") from None
    mode = settings.api_label
    click.echo(f"dry run of batch {key}: nothing sent [{mode}]")
    click.echo(f"  {'rows':<22} {estimate.rows}")
    click.echo(f"  {'rows to send':<22} {estimate.rows_to_send}")
    click.echo(f"  {'images to generate':<22} {estimate.images}")
    click.echo(f"  {'skipped already done':<22} {estimate.rows_already_done}")
    if estimate.rows_linked:
        click.echo(f"  {'linked, not paid':<22} {estimate.rows_linked}")
    if estimate.rows_recovered:
        click.echo(f"  {'collected from ledger':<22} {estimate.rows_recovered}")
    if estimate.rows_unknown:
        click.echo(f"  {'unknown, not resent':<22} {estimate.rows_unknown}")
    click.echo(f"  {'rejected':<22} {estimate.rows_rejected}")
    for model, usd in sorted(estimate.usd_by_model.items()):
        click.echo(f"  {'  ' + model:<22} ${usd:.2f}")
    click.echo(f"  {'estimated cost':<22} ${estimate.usd:.2f}")
    if estimate.unpriced_models:
        click.echo(f"  {'no price for':<22} {', '.join(estimate.unpriced_models)}")
    if estimate.quoted_models:
        click.echo(f"  {'quoted by Ideogram':<22} {', '.join(estimate.quoted_models)} (dry_run)")
    try:
        check_budget(estimate, max_cost)
    except CostLimitExceeded as exc:
        raise click.ClickException(str(exc)) from None
    if max_cost is not None:
        click.echo(f"  {'max cost':<22} ${max_cost:.2f} (within budget)")

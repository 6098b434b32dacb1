"""``migrate``: bring a history written by an earlier release into the tables."""

from __future__ import annotations

import click

from ideogram_pipeline.cli.common import main, settings_or_exit


def _money(value: float) -> str:
    return f"${value:.2f}"


@main.command()
@click.option(
    "--dry-run", is_flag=True, help="Read and compare only: print what would be imported."
)
@click.option(
    "--remove-old",
    is_flag=True,
    help="Once every batch is verified, delete the old files (metadata/generations, "
    "tag_changes, pins, usage_rollup, lifecycle).",
)
def migrate(dry_run: bool, remove_old: bool) -> None:
    """Import the old-layout history (Parquet under metadata/) into the history tables.

    Safe to run again: rows already imported are not written twice, and a batch whose
    old files have not changed since it was verified is skipped. Each batch's record
    count and cost sum are checked in the tables before it counts as migrated; the old
    files stay until --remove-old.
    """
    from ideogram_pipeline.history.migrate import BatchOutcome, MigrationError
    from ideogram_pipeline.history.migrate import migrate as run_migration
    from ideogram_pipeline.storage import StorageError

    if dry_run and remove_old:
        raise click.UsageError("--dry-run changes nothing; leave out --remove-old")
    settings = settings_or_exit()

    def show(outcome: BatchOutcome) -> None:
        parts = [
            f"{outcome.records.rows} records ({_money(outcome.records.cost_usd)})",
            f"{outcome.current.rows} current rows ({_money(outcome.current.cost_usd)})",
        ]
        if outcome.usage.rows:
            parts.append(f"{outcome.usage.rows} roll-up rows ({_money(outcome.usage.cost_usd)})")
        if outcome.state == "dry run":
            would = ", ".join(f"{n} {table}" for table, n in outcome.inserted.items() if n)
            state = f"would import {would}" if would else "nothing to import"
        elif outcome.state == "migrated":
            new = sum(outcome.inserted.values())
            state = f"imported {new} rows, verified" if new else "verified (already imported)"
        else:
            state = "already migrated"
        if outcome.superseded:
            state += f"; {outcome.superseded} rows already newer in the tables"
        click.echo(f"batch {outcome.batch}: {', '.join(parts)}: {state}")

    try:
        result = run_migration(settings, dry_run=dry_run, remove_old=remove_old, progress=show)
    except MigrationError as exc:
        raise click.ClickException(f"migration failed: {exc}") from None
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    keyed = result.keyed
    keyed_line = ""
    if keyed is not None and keyed.rows:
        keyed_line = (
            f"{'would key' if dry_run else 'keyed'} {keyed.rows} rows of {len(keyed.batches)} "
            "batches by their content (rows written by a release that knew them by their line)"
        )
    if not result.found_legacy:
        if not keyed_line:
            click.echo(f"nothing to migrate: no old-layout history under {result.root}")
            return
        click.echo(keyed_line)
        if dry_run:
            click.echo("DRY RUN: nothing was written.")
        return
    done = sum(1 for b in result.batches if b.state == "already migrated")
    counts = f"{len(result.batches) - done} batches ({done} already migrated)"
    if dry_run:
        click.echo(f"would migrate {counts}: {result.imported_records} records")
    else:
        click.echo(
            f"migrated {counts}: {result.imported_records} records in {result.seconds:.2f} s "
            f"({result.rows_per_second:,.0f} records/s)"
        )
    if keyed_line:
        click.echo(keyed_line)
    for cleanup_id in result.pending_cleanups:
        click.echo(
            f"note: cleanup {cleanup_id} of the old release was interrupted; its records "
            "were imported as they were: run `ideogram-pipeline cleanup` to finish it",
            err=True,
        )
    if dry_run:
        click.echo("DRY RUN: nothing was written.")
    elif result.removed:
        click.echo(f"removed {result.removed} old files under {result.root}/metadata/")
    elif not remove_old:
        click.echo("the old files were left in place; `migrate --remove-old` deletes them")

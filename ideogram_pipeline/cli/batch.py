"""Commands that generate: ``run``, ``demo`` and ``simulator``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ideogram_pipeline.cli.common import main, max_cost_option, settings_or_exit

if TYPE_CHECKING:
    from ideogram_pipeline.settings import Settings
    from ideogram_pipeline.storage import ObjectStore

SUMMARY_FIELDS = (
    "rows",
    "stored",
    "unsafe",
    "rejected",
    "failed",
    "skipped_already_done",
    "simulated_rows_redone",
    "linked_duplicates",
    "left",
    "left_submitted",
)


def ensure_dagster_home() -> Path:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(Path(".dagster").resolve())
        os.environ["DAGSTER_HOME"] = home
        click.echo(f"DAGSTER_HOME is unset; recording runs in {home}", err=True)
    Path(home).mkdir(parents=True, exist_ok=True)
    instance_config = Path(home) / "dagster.yaml"
    if not instance_config.exists() and Path("dagster.yaml").is_file():
        shutil.copyfile("dagster.yaml", instance_config)
    return Path(home)


def _print_summary(metadata: dict[str, Any], run_id: str) -> None:
    mode = metadata.get("mode", "")
    click.echo(f"batch summary: {mode}" if mode else "batch summary")
    for name in SUMMARY_FIELDS:
        if name in metadata:
            click.echo(f"  {name.replace('_', ' '):<22} {metadata[name]}")
    if metadata.get("unknown_possibly_billed"):
        unknown = metadata["unknown_possibly_billed"]
        click.echo(f"  {'possibly billed':<22} {unknown} (status unknown)")
    if "cost_usd" in metadata:
        click.echo(f"  {'cost':<22} ${float(metadata['cost_usd']):.2f}")
    if metadata.get("estimated_cost_usd") is not None:
        click.echo(f"  {'estimated cost':<22} ${float(metadata['estimated_cost_usd']):.2f}")
    if "seconds" in metadata:
        click.echo(f"  {'seconds':<22} {float(metadata['seconds']):.1f}")
    if metadata.get("retries"):
        click.echo(f"  {'retries':<22} {metadata['retries']}")
    if metadata.get("simulated_rows_redone"):
        click.echo(
            f"  note: {metadata['simulated_rows_redone']} row(s) the simulator had made were "
            "generated again with the Ideogram API (a simulated image never counts as done)"
        )
    if "storage_root" in metadata:
        click.echo(f"  {'storage':<22} {metadata['storage_root']}")
    click.echo(f"  {'dagster run':<22} {run_id}")


def _open_migrated_store(settings: Settings) -> ObjectStore:
    """The storage root, or one line naming why a batch cannot run there (not a Dagster
    step failure): the history is in the old layout, or the root cannot be written."""
    from ideogram_pipeline.history.views import needs_migration
    from ideogram_pipeline.storage import StorageError, open_store

    try:
        store = open_store(settings)
        store.preflight()
        if needs_migration(store):
            raise click.ClickException(
                f"the history under {settings.storage} is in the old layout: run "
                "`ideogram-pipeline migrate` first"
            )
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    return store


def run_csv(csv: Path, batch: str | None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate, then run the batch recorded as a Dagster run (``recorded_run.py``: it
    sends while Dagster starts beside it); shared by ``run``, ``apply`` and ``demo``.

    ``config`` holds further ``BatchConfig`` fields for this run (``max_cost_usd``, ...).
    """
    from ideogram_pipeline.batches.files import BatchFileError, load_batch
    from ideogram_pipeline.storage.keys import batch_key_from

    settings = settings_or_exit()
    key = batch_key_from(batch, csv.stem)
    try:
        loaded = load_batch(csv, key=key)
    except BatchFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"batch {key}: {len(loaded.rows)} rows from {csv} [{settings.api_label}]", err=True)
    store = _open_migrated_store(settings)
    ensure_dagster_home()
    from ideogram_pipeline.cli.recorded_run import run_recorded
    from ideogram_pipeline.runs.runner import tune_process_memory

    tune_process_memory()  # an entry point: the batch runs in this process (in-process run)

    try:
        result = run_recorded(csv.resolve(), loaded, settings, store, config or {})
    except KeyboardInterrupt:  # before or after the batch: nothing of it was running
        raise click.ClickException(f"batch {key}: interrupted") from None
    if result.metadata:
        _print_summary(result.metadata, result.run_id)
    if not result.success:
        raise click.ClickException(result.error or "the batch failed")
    if unknown := int(result.metadata.get("unknown_possibly_billed") or 0):
        click.echo(
            f"batch {key}: {unknown} row(s) possibly billed (status unknown): see "
            f"`ideogram-pipeline unknown --batch {key}`",
            err=True,
        )
    return result.metadata


def batch_key_from_cli(csv: Path, batch: str | None) -> str:
    from ideogram_pipeline.storage.keys import batch_key_from

    return batch_key_from(batch, csv.stem)


def _announce_resend(key: str, max_cost: float | None) -> None:
    """Before resending ``unknown`` rows, say what they are and what they cost: each may
    have been billed already. The run's cost guard (``--max-cost``) counts them too."""
    from ideogram_pipeline import history
    from ideogram_pipeline.runs.unknown_rows import find_unknown, resend_cost

    try:
        con = history.connect(settings_or_exit())
        try:
            rows = find_unknown(con, key)
        finally:
            con.close()
    except Exception:  # no history yet, or unreadable: the run itself will say why
        return
    if not rows:
        click.echo(f"batch {key}: no unknown rows to resend", err=True)
        return
    usd, unpriced = resend_cost(rows)
    limit = f" (within --max-cost ${max_cost:.2f} for the whole run)" if max_cost else ""
    priced = f" + {unpriced} unpriced" if unpriced else ""
    click.echo(
        f"batch {key}: resending {len(rows)} unknown row(s) that may have been billed "
        f"already: ${usd:.2f}{priced} more{limit}",
        err=True,
    )


@main.command()
@click.argument("csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--batch", help="Batch key (default: the file name without its .csv, .xlsx or .xls ending)."
)
@max_cost_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the cost estimate only: nothing is sent, no Dagster run is recorded.",
)
@click.option(
    "--resend-unknown",
    is_flag=True,
    help="Send again rows whose earlier request got no recorded answer (status unknown); "
    "they may have been billed already.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Generate rows whose exact request (explicit seed) is already stored in the history "
    "instead of linking them to that image at no cost.",
)
def run(
    csv: Path,
    batch: str | None,
    max_cost: float | None,
    dry_run: bool,
    resend_unknown: bool,
    force: bool,
) -> None:
    """Generate every row of CSV through Dagster and print a summary.

    Exits 0 when the batch ran to its end (rejected or failed rows are counted in the
    summary), non-zero when it could not run at all (or the estimate is above --max-cost).
    """
    if dry_run:
        from ideogram_pipeline.cli.estimate import print_estimate

        print_estimate(csv, batch, max_cost)
        return
    if resend_unknown:
        _announce_resend(batch_key_from_cli(csv, batch), max_cost)
    config: dict[str, Any] = {"resend_unknown": resend_unknown, "force": force}
    if max_cost is not None:
        config["max_cost_usd"] = max_cost
    run_csv(csv, batch, config)


@main.command()
@click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1.")
@click.option("--latency", default=0.5, show_default=True, help="Seconds per generation.")
@click.option("--max-inflight", default=10, show_default=True, help="In-flight image limit.")
def simulator(port: int, latency: float, max_inflight: int) -> None:
    """Serve the bundled Ideogram simulator (same endpoints and shapes as the real API).

    Point runs at it with IDEOGRAM_SIMULATOR=1 and IDEOGRAM_BASE_URL: their images are then
    recorded as simulated and never count as done for a run against the real API.
    """
    from ideogram_pipeline.simulator.server import SimulatorConfig, serve_forever

    click.echo(
        "runs: IDEOGRAM_SIMULATOR=1 IDEOGRAM_BASE_URL=<the URL below> (images marked "
        "SIMULATED); with its key instead, runs treat it as the real API",
        err=True,
    )
    serve_forever("127.0.0.1", port, SimulatorConfig(latency_s=latency, max_inflight=max_inflight))


DEMO_QUERY = (
    "SELECT status, count(*) AS images, round(sum(cost_usd), 2) AS cost_usd "
    "FROM generations GROUP BY status ORDER BY status"
)


@main.command()
@click.option(
    "--csv",
    "csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Batch to run (default: prompts/demo-landscapes.csv).",
)
def demo(csv: Path | None) -> None:
    """Run a sample batch end to end on the embedded defaults and show where it went.

    The storage is whatever ``IDEOGRAM_STORAGE`` names (``./data`` by default), so pointing
    it and the ``AWS_*`` variables at a bucket runs the demo on S3.
    """
    csv = csv or Path("prompts/demo-landscapes.csv")
    if not csv.is_file():
        raise click.ClickException(f"{csv} not found: run the demo from the repository root")
    metadata = run_csv(csv, None)
    settings = settings_or_exit()
    root = metadata.get("storage_root", settings.storage)
    click.echo("")
    click.echo(f"images:  {root}/images/")
    click.echo(f"history: {root}/history/ (Delta tables: generations, generation_records)")
    click.echo(f'\n$ ideogram-pipeline query "{DEMO_QUERY}"')
    from ideogram_pipeline.cli.history import show_query

    show_query(settings, DEMO_QUERY)

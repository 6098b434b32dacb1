"""The ``ideogram-pipeline`` command: thin wrappers that print one clear line on error.

Dagster is imported only by the commands that run a batch, so ``--help`` and ``query``
start fast.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from ideogram_pipeline.settings import Settings, SettingsError, load_settings

SUMMARY_FIELDS = ("rows", "stored", "unsafe", "rejected", "failed", "skipped_already_done")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _ensure_dagster_home() -> Path:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ideogram-pipeline")
def main() -> None:
    """Batch Ideogram image generation: CSV in, stored images and queryable metadata out."""


def _print_summary(metadata: dict[str, Any], run_id: str) -> None:
    mode = metadata.get("mode", "")
    click.echo(f"batch summary: {mode}" if mode else "batch summary")
    for name in SUMMARY_FIELDS:
        if name in metadata:
            click.echo(f"  {name.replace('_', ' '):<22} {metadata[name]}")
    if "cost_usd" in metadata:
        click.echo(f"  {'cost':<22} ${float(metadata['cost_usd']):.2f}")
    if "seconds" in metadata:
        click.echo(f"  {'seconds':<22} {float(metadata['seconds']):.1f}")
    if metadata.get("retries"):
        click.echo(f"  {'retries':<22} {metadata['retries']}")
    if "storage_root" in metadata:
        click.echo(f"  {'storage':<22} {metadata['storage_root']}")
    click.echo(f"  {'dagster run':<22} {run_id}")


def run_csv(csv: Path, batch: str | None) -> dict[str, Any]:
    """Validate, then materialize through Dagster; shared by ``run`` and ``demo``."""
    from ideogram_pipeline.batches import BatchFileError, load_batch
    from ideogram_pipeline.keys import batch_key_for

    settings = _settings()
    key = batch_key_for(batch or csv.stem)
    try:
        loaded = load_batch(csv, key=key)
    except BatchFileError as exc:
        raise click.ClickException(str(exc)) from None
    mode = (
        "SIMULATED: no IDEOGRAM_API_KEY, using the bundled simulator"
        if settings.simulated
        else "Ideogram API"
    )
    click.echo(f"batch {key}: {len(loaded.rows)} rows from {csv} [{mode}]", err=True)
    _ensure_dagster_home()
    from ideogram_pipeline.defs.launch import materialize_batch

    result = materialize_batch(csv.resolve(), key)
    if result.metadata:
        _print_summary(result.metadata, result.run_id)
    if not result.success:
        raise click.ClickException(result.error or "the batch failed")
    return result.metadata


@main.command()
@click.argument("csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", help="Batch key (default: the CSV file name without .csv).")
def run(csv: Path, batch: str | None) -> None:
    """Generate every row of CSV through Dagster and print a summary.

    Exits 0 when the batch ran to its end (rejected or failed rows are counted in the
    summary), non-zero when it could not run at all.
    """
    run_csv(csv, batch)


@main.command()
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def query(sql: str, fmt: str) -> None:
    """Run SQL in DuckDB with a `generations` view over the metadata.

    `generations` holds the current record of every row; `generation_records` holds every
    record of every run.
    """
    import duckdb

    from ideogram_pipeline import history

    con = history.connect(_settings())
    try:
        frame = con.execute(sql).df()
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {exc}") from None
    finally:
        con.close()
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(frame.to_json(orient="records", date_format="iso", indent=2))
    else:
        click.echo(frame.to_string(index=False) if len(frame.columns) else "(no columns)")


@main.command()
@click.option("--port", default=8765, show_default=True, help="Port on 127.0.0.1.")
@click.option("--latency", default=0.5, show_default=True, help="Seconds per generation.")
@click.option("--max-inflight", default=10, show_default=True, help="In-flight image limit.")
def simulator(port: int, latency: float, max_inflight: int) -> None:
    """Serve the bundled Ideogram simulator (same endpoints and shapes as the real API)."""
    from ideogram_pipeline.ideogram.simulator import SimulatorConfig, serve_forever

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
    """Run a sample batch end to end on the embedded defaults and show where it went."""
    csv = csv or Path("prompts/demo-landscapes.csv")
    if not csv.is_file():
        raise click.ClickException(f"{csv} not found: run the demo from the repository root")
    metadata = run_csv(csv, None)
    settings = _settings()
    root = metadata.get("storage_root", settings.storage)
    click.echo("")
    click.echo(f"images:   {root}/images/")
    click.echo(f"metadata: {root}/metadata/generations/ (Hive-partitioned Parquet)")
    click.echo(f'\n$ ideogram-pipeline query "{DEMO_QUERY}"')
    from ideogram_pipeline import history

    con = history.connect(settings)
    try:
        click.echo(con.execute(DEMO_QUERY).df().to_string(index=False))
    finally:
        con.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

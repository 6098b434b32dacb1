"""Commands that read the history: ``query``."""

from __future__ import annotations

import click

from ideogram_pipeline.cli.common import main, settings_or_exit


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

    con = history.connect(settings_or_exit())
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

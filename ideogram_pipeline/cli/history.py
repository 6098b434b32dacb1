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
    record of every run. Queries only read, and only files under the storage root.
    """
    import duckdb

    from ideogram_pipeline.query_sandbox import QueryRefused, run_query
    from ideogram_pipeline.safe_output import neutralise_csv_cell

    try:
        frame = run_query(settings_or_exit(), sql)
    except QueryRefused as exc:
        raise click.ClickException(f"query refused: {exc}") from None
    except duckdb.PermissionException as exc:
        first = str(exc).splitlines()[0]
        raise click.ClickException(
            f"query refused: {first} (queries may read only the storage root)"
        ) from None
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {exc}") from None
    if fmt == "csv":
        # Cells a spreadsheet would run as formulas (=, +, -, @) are shown as text.
        frame = frame.map(neutralise_csv_cell).rename(columns=neutralise_csv_cell)
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(frame.to_json(orient="records", date_format="iso", indent=2))
    else:
        click.echo(frame.to_string(index=False) if len(frame.columns) else "(no columns)")


@main.command("duckdb-init")
@click.option(
    "--with-credentials",
    is_flag=True,
    help="Print the AWS key id and secret instead of placeholders (keep the output private).",
)
def duckdb_init(with_credentials: bool) -> None:
    """Print SQL that gives your own DuckDB client the same `generations` views.

    For an S3 root it loads httpfs and creates an S3 secret from the AWS settings; the
    credentials are placeholders unless --with-credentials is given.
    """
    from ideogram_pipeline import history
    from ideogram_pipeline.storage import open_store
    from ideogram_pipeline.storage.duckdb_s3 import duckdb_init_sql

    settings = settings_or_exit()
    view_sql = history.view_sql(open_store(settings))
    if settings.is_s3:
        click.echo(duckdb_init_sql(settings, view_sql, with_credentials=with_credentials), nl=False)
    else:
        click.echo(f"-- DuckDB setup for ideogram-pipeline storage {settings.storage}")
        click.echo(view_sql, nl=False)

"""Commands that read the history: ``query``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ideogram_pipeline.cli.common import main, settings_or_exit
from ideogram_pipeline.cli.output import FORMAT_OPTION, emit
from ideogram_pipeline.settings import Settings

if TYPE_CHECKING:
    from ideogram_pipeline.history.sandbox import QueryLimits


# Kept equal to sandbox.DEFAULT_MEMORY_LIMIT / DEFAULT_TIMEOUT_S (not imported: fast --help).
DEFAULT_MEMORY_LIMIT = "2GB"
DEFAULT_TIMEOUT_S = 300.0


@main.command()
@click.argument("sql")
@FORMAT_OPTION
@click.option(
    "--memory-limit",
    default=DEFAULT_MEMORY_LIMIT,
    show_default=True,
    metavar="SIZE",
    help="Most memory the query may use, e.g. 512MB or 8GB (SQL cannot change it).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Stop the query after this many seconds.",
)
def query(sql: str, fmt: str, memory_limit: str, timeout_s: float) -> None:
    """Run SQL in DuckDB over the history tables.

    `generations` holds the current record of every row of each batch's latest file (tags
    and pins as they are now); `generations_all` also the rows that left their file
    (`in_file` false); `generation_records` holds every record ever written. Queries only
    read, and only files under the storage root, within a memory and a time limit.
    """
    from ideogram_pipeline.history.sandbox import QueryLimits

    try:
        limits = QueryLimits(memory_limit=memory_limit, timeout_s=timeout_s)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--memory-limit") from None
    show_query(settings_or_exit(), sql, fmt, limits)


def show_query(
    settings: Settings, sql: str, fmt: str = "table", limits: QueryLimits | None = None
) -> None:
    """Run ``sql`` as the ``query`` command does and print its rows in ``fmt``."""
    import duckdb

    from ideogram_pipeline.history.sandbox import QueryLimitReached, QueryRefused, query_rows
    from ideogram_pipeline.storage import StorageError

    try:
        columns, rows = query_rows(settings, sql, limits=limits)
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    except QueryLimitReached as exc:
        raise click.ClickException(f"query stopped: {exc}") from None
    except QueryRefused as exc:
        raise click.ClickException(f"query refused: {exc}") from None
    except duckdb.PermissionException as exc:
        first = str(exc).splitlines()[0]
        raise click.ClickException(
            f"query refused: {first} (queries may read only the storage root)"
        ) from None
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {exc}") from None
    if not columns:
        click.echo("(no columns)")
        return
    # Duplicate names (SELECT 1 AS a, 2 AS a) get a suffix, so no value is lost.
    names = _unique(columns)
    records = [dict(zip(names, row, strict=True)) for row in rows]
    emit(records, names, fmt, widths={}, empty="(no rows)")


def _unique(columns: list[str]) -> list[str]:
    names: list[str] = []
    for column in columns:
        name, number = column, 1
        while name in names:
            name, number = f"{column}_{number}", number + 1
        names.append(name)
    return names


@main.command("duckdb-init")
@click.option(
    "--with-credentials",
    is_flag=True,
    help="Print the AWS key id and secret instead of placeholders (keep the output private).",
)
def duckdb_init(with_credentials: bool) -> None:
    """Print SQL that gives your own DuckDB client the same `generations` views.

    Each view is one `delta_scan` of a table under the storage root (the `delta`
    extension reads it). For an S3 root it also loads httpfs and creates an S3 secret from
    the AWS settings; the credentials are placeholders unless --with-credentials is given.
    """
    from ideogram_pipeline.history.duckdb_s3 import duckdb_init_sql

    settings = settings_or_exit()
    click.echo(duckdb_init_sql(settings, with_credentials=with_credentials), nl=False)

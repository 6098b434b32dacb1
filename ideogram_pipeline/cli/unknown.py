"""``unknown``: the rows that may have been billed without an answer, and what a resend costs."""

from __future__ import annotations

import click

from ideogram_pipeline.cli.common import main, settings_or_exit
from ideogram_pipeline.cli.output import FORMAT_OPTION, emit

COLUMNS = ("batch", "row", "sent_at", "model", "num_images", "resend_usd", "prompt")


@main.command()
@click.option("--batch", help="Only this batch key.")
@FORMAT_OPTION
def unknown(batch: str | None, fmt: str) -> None:
    """List rows whose request was sent but whose answer was never recorded (status unknown).

    Each may have been billed already: Ideogram could have generated it while the run died.
    The list says when each was sent and what resending it would cost; resend with
    ``ideogram-pipeline run CSV --resend-unknown`` (which prints that cost first and
    respects ``--max-cost``).
    """
    from ideogram_pipeline import history
    from ideogram_pipeline.runs.unknown_rows import find_unknown, resend_cost
    from ideogram_pipeline.storage import StorageError

    try:
        con = history.connect(settings_or_exit())
        try:
            rows = find_unknown(con, batch)
        finally:
            con.close()
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    emit([row.as_dict() for row in rows], COLUMNS, fmt, empty="(no unknown rows)")
    if rows and fmt == "table":
        usd, unpriced = resend_cost(rows)
        extra = f" (+{unpriced} row(s) of models without a published price)" if unpriced else ""
        click.echo(
            f"{len(rows)} row(s) possibly billed; resending them would cost ${usd:.2f}{extra}",
            err=True,
        )

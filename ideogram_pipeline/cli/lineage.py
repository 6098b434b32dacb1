"""``lineage ID``: an image's ancestors and descendants (``history/lineage.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ideogram_pipeline.cli.common import main, settings_or_exit
from ideogram_pipeline.cli.output import terminal_text, text_or_json_option

if TYPE_CHECKING:
    from ideogram_pipeline.history.lineage import LineageNode


def _line(node: LineageNode, indent: int) -> str:
    when = f"{node.created_at:%Y-%m-%d %H:%M}" if node.created_at else "-"
    fields = [node.id, node.operation, node.status, when, node.location]
    return "  " * indent + "  ".join(terminal_text(field) for field in fields)


@main.command()
@click.argument("record_id", metavar="ID")
@text_or_json_option("text: one line per image; json: the record, ancestors and descendants.")
def lineage(record_id: str, fmt: str) -> None:
    """Show where an image came from and what was made from it.

    ID is a record id (or a unique prefix of at least 6 characters). Ancestors are
    followed through derived_from (the source, its source, ...); descendants are the
    records derived from it (upscales, remixes, reframes, ...), recursively. Each line:
    id, operation, status, created_at, and the public URL or stored location; an image
    retention deleted is shown as deleted.

    Example: ideogram-pipeline lineage 3f9c2a7b
    """
    from ideogram_pipeline.history.lineage import lineage as read
    from ideogram_pipeline.history.record_ids import RecordIdError
    from ideogram_pipeline.storage import StorageError

    try:
        found = read(settings_or_exit(), record_id)
    except (RecordIdError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(found.as_dict(), indent=2, default=str, ensure_ascii=False))
        return
    if found.ancestors:
        click.echo("ancestors (oldest first):")
        for node in reversed(found.ancestors):
            click.echo(_line(node, 1))
    click.echo("image:")
    click.echo(_line(found.record, 1))
    if found.descendants:
        click.echo("descendants:")
        for node in found.descendants:
            click.echo(_line(node, node.depth))
    else:
        click.echo("descendants: none")

"""Commands that act on recorded images: ``reproduce``, ``tag`` and ``export``."""

from __future__ import annotations

from pathlib import Path

import click

from ideogram_pipeline.cli.common import main, settings_or_exit
from ideogram_pipeline.cli.output import FORMAT_OPTION, emit

REPRODUCE_COLUMNS = ("source_id", "new_id", "status", "identical", "distance", "stored_uri")


@main.command()
@click.argument("ids", nargs=-1)
@click.option("--batch", help="Reproduce every stored image of this batch instead of IDS.")
@click.option("--tag", "tags", multiple=True, help="Tag for the new records (repeatable).")
@click.option("--dry-run", is_flag=True, help="Show what would be sent and its cost; send nothing.")
@FORMAT_OPTION
def reproduce(
    ids: tuple[str, ...], batch: str | None, tags: tuple[str, ...], dry_run: bool, fmt: str
) -> None:
    """Generate recorded images again with the same request and seed, and compare.

    IDS are record ids (or unique prefixes of at least 6 characters). The new images are
    stored as new records with `reproduced_from` naming the original, in a batch called
    reproduce-...; the report says whether each is byte-identical to the original download
    or, if not, its perceptual-hash distance (0 = looks the same). This is paid work.
    """
    from ideogram_pipeline import history
    from ideogram_pipeline.history.record_ids import RecordIdError, resolve_ids
    from ideogram_pipeline.history.reproduce import ReproduceError, plan
    from ideogram_pipeline.history.reproduce import reproduce as run_reproduce
    from ideogram_pipeline.history.tags import TagError
    from ideogram_pipeline.runs.engine import BatchAborted
    from ideogram_pipeline.storage import StorageError, open_store

    settings = settings_or_exit()
    try:
        store = open_store(settings)
        con = history.connect(settings, store)
        try:
            full_ids = resolve_ids(con, ids) if ids else []
            planned = plan(con, ids=full_ids, batch=batch, tags=tags)
        finally:
            con.close()
    except (ReproduceError, RecordIdError, TagError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    images = sum(item.request.num_images for item in planned)
    cost = sum(item.cost_usd for item in planned)
    mode = settings.api_label
    click.echo(f"{len(planned)} request(s), {images} image(s), ~${cost:.2f} [{mode}]", err=True)
    for item in planned:
        if not item.exact:
            names = ", ".join(sorted(s["id"][:12] for s in item.sources.values()))
            click.echo(
                f"note: the original request of {names} could not be rebuilt exactly "
                "(its request hash does not match); sent as recorded",
                err=True,
            )
    if dry_run:
        rows = [
            {
                "row": item.request.row,
                "sources": [s["id"] for s in item.sources.values()],
                "model": item.request.model,
                "seed": item.request.seed,
                "num_images": item.request.num_images,
                "cost_usd": round(item.cost_usd, 4),
                "prompt": item.request.prompt,
            }
            for item in planned
        ]
        emit(rows, ("row", "sources", "model", "seed", "num_images", "cost_usd", "prompt"), fmt)
        return
    try:
        result = run_reproduce(settings, store, planned, label=batch or "ids")
    except BatchAborted as exc:
        raise click.ClickException(str(exc)) from None
    except (ReproduceError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    rows = [
        {
            "source_id": item.source_id,
            "new_id": item.new_id,
            "status": item.status,
            "identical": item.identical,
            "distance": item.distance,
            "stored_uri": item.stored_uri or item.error,
        }
        for item in result.items
    ]
    emit(rows, REPRODUCE_COLUMNS, fmt)
    same = sum(1 for item in result.items if item.identical)
    compared = sum(1 for item in result.items if item.identical is not None)
    click.echo(
        f"batch {result.batch}: {same} of {compared} compared image(s) byte-identical, "
        f"cost ${result.summary.cost_usd:.2f}",
        err=True,
    )


@main.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--add", "add", multiple=True, help="Tag to add (repeatable).")
@click.option("--remove", "remove", multiple=True, help="Tag to remove (repeatable).")
def tag(ids: tuple[str, ...], add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """Add or remove tags on recorded images after the fact.

    IDS are record ids (or unique prefixes of at least 6 characters) of current images
    (the `generations` table). The tags are changed in the table itself, with an audit
    record in `generation_records`, and show at once in `query`, `search` and `export`.
    A `keep` tag protects a record from retention cleanup.
    """
    from ideogram_pipeline import history
    from ideogram_pipeline.history.record_ids import RecordIdError
    from ideogram_pipeline.history.tags import TagError, change_tags
    from ideogram_pipeline.safe_output import sql_list
    from ideogram_pipeline.storage import StorageError

    settings = settings_or_exit()
    try:
        change = change_tags(settings, ids, add=add, remove=remove)
        con = history.connect(settings, views=("generations",))
        try:
            # Literals, not bound parameters: binding imports pandas (half a second).
            now = con.execute(
                f"SELECT id, tags FROM generations WHERE id IN ({sql_list(change.ids)[1:-1]}) "
                "ORDER BY id"
            ).fetchall()
        finally:
            con.close()
    except (RecordIdError, TagError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    changes = [f"+{t}" for t in change.added] + [f"-{t}" for t in change.removed]
    click.echo(f"{change.records} record(s): {' '.join(changes)}")
    for record_id, tags in now:
        click.echo(f"  {record_id[:12]}  {'|'.join(tags or []) or '(no tags)'}")


@main.command()
@click.option(
    "--where",
    required=True,
    help="SQL condition over the `generations` view, e.g. \"batch = 'spring' AND "
    "list_contains(tags, 'keep')\". It is your own SQL, run as written (like `query`).",
)
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path),
    help="A new or empty folder, or a new .zip file.",
)
def export(where: str, target: Path) -> None:
    """Copy the chosen images, with Parquet and CSV of their metadata, to a folder or ZIP.

    The export holds images/ (the stored PNGs, checksums verified), metadata.parquet,
    metadata.csv (spreadsheet-safe) and export.json (the condition and the counts).
    """
    from ideogram_pipeline.history.export import ExportError
    from ideogram_pipeline.history.export import export as run_export
    from ideogram_pipeline.storage import StorageError, open_store

    settings = settings_or_exit()
    try:
        result = run_export(settings, open_store(settings), where, target)
    except (ExportError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"exported {result.records} record(s) and {result.images} image(s) "
        f"({result.bytes_written / 1e6:.1f} MB) to {result.target}"
    )
    for problem in result.problems:
        click.echo(f"warning: {problem}", err=True)

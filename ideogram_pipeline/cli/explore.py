"""Commands that find things in the history: ``search``, ``inspect`` and ``duplicates``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ideogram_pipeline.cli.common import main, settings_or_exit
from ideogram_pipeline.cli.output import FORMAT_OPTION, emit, terminal_text, text_or_json_option
from ideogram_pipeline.ideogram.generation import STATUSES


@main.command()
@click.argument("text", required=False)
@click.option("--seed", type=int, help="Exact seed.")
@click.option("--model", help="Model, e.g. V_3 or V_2_TURBO.")
@click.option("--style", help="Style type, e.g. REALISTIC.")
@click.option("--aspect-ratio", help="Aspect ratio, 16:9 or 16x9.")
@click.option("--tag", "tags", multiple=True, help="Has this tag (repeat: has all of them).")
@click.option("--batch", help="Batch key.")
@click.option(
    "--reference",
    metavar="SHA|ID",
    help="Made from this reference image: its SHA-256 (12+ digits) or a stored record's id.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATUSES),
    help="Row status (repeat for any of several).",
)
@click.option("--since", help="Created on or after this date (YYYY-MM-DD) or ISO time.")
@click.option("--until", help="Created on or before this date (whole day) or ISO time.")
@click.option("--expanded", is_flag=True, help="Also match the Magic-Prompt expansion.")
@click.option("--all-runs", is_flag=True, help="Search every record of every run, not the latest.")
@click.option(
    "--all-rows",
    is_flag=True,
    help="Also rows their batch's latest file no longer holds (in_file false in the results).",
)
@click.option("--limit", default=50, show_default=True, help="Most results to show (0: no limit).")
@FORMAT_OPTION
def search(
    text: str | None,
    seed: int | None,
    model: str | None,
    style: str | None,
    aspect_ratio: str | None,
    tags: tuple[str, ...],
    batch: str | None,
    reference: str | None,
    statuses: tuple[str, ...],
    since: str | None,
    until: str | None,
    expanded: bool,
    all_runs: bool,
    all_rows: bool,
    limit: int,
    fmt: str,
) -> None:
    """Find generations by prompt words, seed, model, style, tag, batch, status or date.

    TEXT holds words and "quoted phrases"; each must appear as whole words in the prompt
    or the image's description (from `describe`), in any case (a trailing * matches a
    prefix: fox* finds foxes). Newest first, with the stored location of each image and,
    when IDEOGRAM_PUBLIC_BASE_URL is set, its public URL.

    Example: ideogram-pipeline search 'fox "fresh snow"' --since 2024-01-01 --tag keep
    """
    from ideogram_pipeline import history
    from ideogram_pipeline.history.search import (
        RESULT_COLUMNS,
        SearchError,
        SearchFilters,
        parse_when,
        view_searched,
    )
    from ideogram_pipeline.history.search import search as run_search
    from ideogram_pipeline.storage import StorageError

    try:
        filters = SearchFilters(
            text=text,
            seed=seed,
            model=model,
            style=style,
            aspect_ratio=aspect_ratio,
            tags=tags,
            batch=batch,
            reference=reference,
            statuses=statuses,
            since=parse_when(since, name="--since") if since else None,
            until=parse_when(until, name="--until") if until else None,
            include_expanded=expanded,
            all_runs=all_runs,
            all_rows=all_rows,
            limit=limit or None,
        )
        view = view_searched(filters)
        settings = settings_or_exit()
        con = history.connect(settings, views=(view,), file_rows_only=True)
        try:
            rows = run_search(con, filters, public_base_url=settings.public_base_url)
        finally:
            con.close()
    except (SearchError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "table":
        rows = [_marked(row) for row in rows]
    emit(rows, RESULT_COLUMNS, fmt)


def _marked(row: dict[str, Any]) -> dict[str, Any]:
    """A table row whose ``simulated`` is a word a person notices (JSON and CSV keep the
    boolean): an image a simulator made is never mistaken for Ideogram's."""
    return {**row, "simulated": "SIMULATED" if row.get("simulated") else ""}


def _read_image(location: str) -> bytes:
    from ideogram_pipeline.images.fingerprints import MAX_IMAGE_BYTES

    if location.startswith("s3://"):
        from ideogram_pipeline.storage import StorageError
        from ideogram_pipeline.storage.s3 import S3Store, make_s3_client, parse_s3_uri

        try:
            bucket, key = parse_s3_uri(location)
            store = S3Store(make_s3_client(settings_or_exit()), bucket, "")
            info = store.head(key)
            if info is None:
                raise click.ClickException(f"{location} does not exist")
            if info.size > MAX_IMAGE_BYTES:
                raise click.ClickException(f"{location} is larger than {MAX_IMAGE_BYTES} bytes")
            return store.get_bytes(key)
        except StorageError as exc:
            raise click.ClickException(str(exc)) from None
    path = Path(location)
    if not path.is_file():
        raise click.ClickException(f"{location} is not a file")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise click.ClickException(f"{location} is larger than {MAX_IMAGE_BYTES} bytes")
    return path.read_bytes()


def _looks_like_id(text: str) -> bool:
    """Hex digits only, no path separator, and no file of that name here."""
    value = text.strip().lower()
    return bool(value) and all(ch in "0123456789abcdef" for ch in value) and not Path(text).exists()


def _record_image(record_id: str) -> tuple[bytes, dict[str, str | None]]:
    """The stored image of record ``record_id`` (a full id or a unique prefix), and where
    it is: ``stored_uri`` and ``public_url`` (the recorded one, or the public base plus its
    key for an image stored before ``IDEOGRAM_PUBLIC_BASE_URL`` was set; None unset)."""
    from ideogram_pipeline import history
    from ideogram_pipeline.history.record_ids import RecordIdError, resolve_ids
    from ideogram_pipeline.storage import StorageError, open_store
    from ideogram_pipeline.storage.public_urls import public_url

    settings = settings_or_exit()
    try:
        store = open_store(settings)
        con = history.connect(settings, store, views=("generation_records",))
        try:
            (full_id,) = resolve_ids(con, [record_id])
            row = con.execute(
                "SELECT any_value(image_key), max(public_url) FROM generation_records "
                "WHERE id = ? AND status = 'stored' AND image_key IS NOT NULL",
                [full_id],
            ).fetchone()
        finally:
            con.close()
        if not row or not row[0]:
            raise click.ClickException(f"record {full_id} has no stored image to inspect")
        if store.head(row[0]) is None:
            raise click.ClickException(
                f"the image of record {full_id} ({store.uri(row[0])}) no longer exists "
                "(deleted by retention?)"
            )
        location = {
            "stored_uri": store.uri(row[0]),
            "public_url": row[1] or public_url(settings.public_base_url, row[0]),
        }
        return store.get_bytes(row[0]), location
    except (RecordIdError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("file")
@text_or_json_option("text: the parameters and the record; json: every text chunk, parsed.")
def inspect(file: str, fmt: str) -> None:
    """Show the generation parameters embedded in a stored PNG.

    FILE is a path, an s3:// URI, or a record id (or a unique prefix of at least 6
    characters) whose stored image is read from the storage root. Every image the pipeline
    stores carries a human-readable `parameters` text chunk and an `ideogram-pipeline` JSON
    chunk with the full record (a derived image names its operation and derived_from; with
    IDEOGRAM_PUBLIC_BASE_URL set, its public_url). An image the simulator made says
    SIMULATED first. Given a record id, where the image is stored is shown too.
    """
    from ideogram_pipeline.images.png_metadata import PngError, read_metadata

    location: dict[str, str | None] | None = None
    if _looks_like_id(file):
        data, location = _record_image(file)
    else:
        data = _read_image(file)
    try:
        meta = read_metadata(data)
    except PngError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    if meta["parameters"] is None and meta["record"] is None:
        raise click.ClickException(f"{file} carries no generation parameters")
    if fmt == "json":
        shown = meta if location is None else {**meta, "location": location}
        click.echo(json.dumps(shown, indent=2, ensure_ascii=False))
        return
    if (meta["record"] or {}).get("simulated"):
        click.echo("SIMULATED: made by the simulator, not by Ideogram")
    if meta["parameters"] is not None:
        click.echo("parameters:")
        for line in meta["parameters"].splitlines():
            click.echo(f"  {terminal_text(line)}")
    if meta["record"] is not None:
        click.echo("record:")
        for key, value in meta["record"].items():
            click.echo(f"  {key + ':':<18} {terminal_text(value)}")
    if location is not None:
        click.echo("location:")
        for key, value in location.items():
            if value:
                click.echo(f"  {key + ':':<18} {terminal_text(value)}")


DUPLICATE_COLUMNS = (
    "group",
    "distance",
    "id",
    "batch",
    "row",
    "records",
    "simulated",
    "prompt",
    "stored_uri",
)


@main.command()
@click.option(
    "--distance",
    default=4,
    show_default=True,
    type=click.IntRange(0, 32),
    help="Most differing bits (of 64) between perceptual hashes to count as near-identical.",
)
@click.option("--batch", help="Only images of this batch.")
@FORMAT_OPTION
def duplicates(distance: int, batch: str | None, fmt: str) -> None:
    """Group near-identical stored images by perceptual hash (pHash).

    Each group lists its images with their distance (differing bits) from the group's
    earliest image; records linked as exact duplicates count under their original.
    """
    from ideogram_pipeline import history
    from ideogram_pipeline.history.duplicates import near_duplicate_groups
    from ideogram_pipeline.storage import StorageError

    try:
        con = history.connect(settings_or_exit())
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        groups = near_duplicate_groups(con, distance, batch=batch)
    finally:
        con.close()
    rows = [
        {**image, "group": number}
        for number, group in enumerate(groups, start=1)
        for image in group
    ]
    if fmt == "table" and rows:
        click.echo(f"{len(groups)} group(s) of near-identical images (distance <= {distance})")
        rows = [_marked(row) for row in rows]
    emit(rows, DUPLICATE_COLUMNS, fmt)

"""Commands that hand an image to someone else: ``share``."""

from __future__ import annotations

import click

from ideogram_pipeline.cli.common import main, settings_or_exit

DEFAULT_EXPIRES_S = 3600  # keep equal to sharing.DEFAULT_EXPIRES_S (not imported: fast --help)


@main.command()
@click.argument("record_id", metavar="ID")
@click.option(
    "--expires",
    "expires_s",
    type=int,
    default=DEFAULT_EXPIRES_S,
    show_default=True,
    help="Seconds the link stays valid (at most 604800, i.e. 7 days).",
)
def share(record_id: str, expires_s: int) -> None:
    """Print a presigned URL for the stored image of record ID (S3 roots only).

    The link reads that one image until it expires; the bucket is never made public.
    Anyone with the link can open the image, so share it like a password.
    """
    from ideogram_pipeline.history.sharing import ShareError, share_image
    from ideogram_pipeline.storage import StorageError

    try:
        shared = share_image(settings_or_exit(), record_id, expires_s)
    except (ShareError, StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"record {shared.record_id}: link valid until {shared.expires_at:%Y-%m-%d %H:%M:%S} UTC",
        err=True,
    )
    click.echo(shared.url)

"""Sharing one stored image with someone who has no credentials: a presigned URL.

A presigned URL grants ``GetObject`` on exactly one key, until it expires, signed with the
pipeline's own credentials; nothing about the bucket changes. The alternatives are worse:
a public ACL (or bucket policy) exposes the object forever, to everyone, and many accounts
block public access outright. The URL contains the access key *id* and a signature, never
the secret key. Anyone holding the URL can read that image until it expires, so expiries
are short by default and capped at S3's maximum of seven days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store

__all__ = ["DEFAULT_EXPIRES_S", "MAX_EXPIRES_S", "ShareError", "SharedImage", "share_image"]

DEFAULT_EXPIRES_S = 3600
#: SigV4 presigned URLs are valid for at most 7 days.
MAX_EXPIRES_S = 7 * 24 * 3600


class ShareError(ValueError):
    """The image cannot be shared; the message says why and what to do."""


@dataclass(frozen=True)
class SharedImage:
    record_id: str
    stored_uri: str
    url: str
    expires_at: datetime


def _stored_uri(settings: Settings, store: ObjectStore, record_id: str) -> tuple[str, str]:
    """The full record id and ``stored_uri`` of a stored record (id or unique prefix)."""
    from ideogram_pipeline import history
    from ideogram_pipeline.history.record_ids import RecordIdError, resolve_ids

    con = history.connect(settings, store)
    try:
        try:
            (full_id,) = resolve_ids(con, [record_id])
        except RecordIdError as exc:
            raise ShareError(str(exc)) from None
        row = con.execute(
            "SELECT any_value(stored_uri) FROM generation_records "
            "WHERE id = ? AND status = 'stored' AND stored_uri IS NOT NULL",
            [full_id],
        ).fetchone()
    finally:
        con.close()
    if not row or not row[0]:
        raise ShareError(
            f"record {full_id} has no stored image (only stored records can be shared)"
        )
    return full_id, str(row[0])


def share_image(
    settings: Settings,
    record_id: str,
    expires_s: int = DEFAULT_EXPIRES_S,
    *,
    store: ObjectStore | None = None,
) -> SharedImage:
    """A presigned GET URL for the image of ``record_id``, valid for ``expires_s`` seconds.

    The object must lie under the configured storage root (a tampered metadata row cannot
    make this sign a URL for another bucket or prefix) and must still exist.
    """
    if not 1 <= expires_s <= MAX_EXPIRES_S:
        raise ShareError(f"--expires must be between 1 and {MAX_EXPIRES_S} seconds (7 days)")
    if not settings.is_s3:
        raise ShareError(
            "sharing makes a presigned S3 URL, so it needs an S3 storage root "
            "(IDEOGRAM_STORAGE=s3://bucket/prefix); on a local root, send the file itself"
        )
    from ideogram_pipeline.storage.s3 import make_s3_client, parse_s3_uri

    store = store or open_store(settings)
    full_id, stored_uri = _stored_uri(settings, store, record_id)
    root_bucket, root_prefix = parse_s3_uri(settings.storage)
    bucket, key = parse_s3_uri(stored_uri)
    images = f"{root_prefix}/images/" if root_prefix else "images/"
    if bucket != root_bucket or not key.startswith(images) or ".." in key.split("/"):
        raise ShareError(
            f"{stored_uri} is not under the storage root's images/ ({settings.storage})"
        )
    if store.head(key[len(root_prefix) + 1 :] if root_prefix else key) is None:
        raise ShareError(f"{stored_uri} no longer exists (deleted by retention?)")
    client = make_s3_client(settings)
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
    )
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=expires_s)
    return SharedImage(full_id, stored_uri, url, expires_at)

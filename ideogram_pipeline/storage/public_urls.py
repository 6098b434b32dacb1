"""Where a stored image can be fetched by anyone: a CDN (or public-bucket) base + its key.

``IDEOGRAM_PUBLIC_BASE_URL`` names a domain that serves the storage root as it is laid out
(``images/2024/05/01/<id>.png`` under the root is ``<base>/images/2024/05/01/<id>.png``).
The key alone decides the URL, never the bucket or the local path, so moving the root
behind another CDN changes only the base. Objects are written once under keys that never
change, with ``Cache-Control: public, max-age=31536000, immutable`` (``runs/storing.py``),
so a CDN may cache them for a year.

Unset, there is no public URL: nothing public is implied, and ``share`` (a presigned link
that expires) stays the way to hand out one image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from ideogram_pipeline.history.schema import GenerationRecord

__all__ = ["public_url", "with_public_url"]


def public_url(base: str | None, key: str | None) -> str | None:
    """``base/key`` (the key percent-encoded, ``/`` kept), or None without a base or key.

    ``base`` is a validated ``Settings.public_base_url`` (no trailing slash)."""
    if not base or not key:
        return None
    return f"{base.rstrip('/')}/{quote(key.lstrip('/'), safe='/')}"


def with_public_url(record: GenerationRecord, base: str | None) -> GenerationRecord:
    """``record`` with the public URL of its stored image, when it has one and a base is
    set; any other record unchanged (a failed or unsafe record has no image to serve)."""
    if base is None or record.status != "stored" or not record.image_key:
        return record
    url = public_url(base, record.image_key)
    return record if record.public_url == url else replace(record, public_url=url)

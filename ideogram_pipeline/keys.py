"""Names from users become storage keys and partition values only through here.

A batch key comes from a CSV file name, which a user controls. It must never smuggle a
``/``, ``..``, ``=`` or control character into an object key or a Hive partition value,
and two different names must never map to the same key.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["batch_key_for", "image_key"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_KEY_LENGTH = 80


def batch_key_for(name: str) -> str:
    """A safe, collision-free batch key for a user-supplied name (usually a file stem).

    Safe names pass through unchanged, so ``prompts/spring-sale.csv`` is batch
    ``spring-sale``; anything else is slugified and suffixed with a hash of the original.
    """
    if (
        name
        and not _UNSAFE.search(name)
        and not name.startswith(".")
        and len(name) <= MAX_KEY_LENGTH
    ):
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = _UNSAFE.sub("-", ascii_name).strip(".-_")[: MAX_KEY_LENGTH - 9] or "batch"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug}-{digest}"


def image_key(record_id: str, created_day: str) -> str:
    """Object key of a stored image: date prefix for lifecycle listing, then the record id."""
    year, month, day = created_day.split("-")
    return f"images/{year}/{month}/{day}/{record_id}.png"

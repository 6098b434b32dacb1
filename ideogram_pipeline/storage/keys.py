"""Names from users become storage keys and partition values only through here.

A batch key comes from a CSV file name (or ``--batch``), a tag from a CSV cell: both are
user-controlled. Neither may smuggle a ``/``, ``..``, ``=``, ``%``, a control character or a
leading dot into an object key, a file name or a Hive partition value, and two different
names must never map to the same key. The original name is kept in the metadata
(``batch_name``), so escaping loses nothing.

The rules, and why:

- A *safe key* is lower-case ``[a-z0-9._-]``, starts with a letter or digit, has no ``..``,
  does not end with a dot, is at most :data:`MAX_KEY_LENGTH` characters and is not a Windows
  device name. Lower case only, because macOS and Windows file systems fold case: ``Sale``
  and ``sale`` would otherwise share one ``batch=`` folder on a local root.
- A name that is already safe passes through unchanged (``spring-sale.csv`` is batch
  ``spring-sale``), unless it ends like an escaped key (``-`` and 8 hex digits).
- Any other name becomes ``<slug>-<8 hex digits of its SHA-256>``. Escaped keys always end
  with that suffix and pass-through keys never do, so the mapping is injective: two names
  collide only if their slugs and SHA-256 prefixes both match.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = [
    "MAX_KEY_LENGTH",
    "batch_key_for",
    "batch_key_from",
    "image_key",
    "is_safe_key",
    "tag_key_for",
]

MAX_KEY_LENGTH = 80
_SAFE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
_ESCAPED_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
_DIGEST_CHARS = 8
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
#: Names Windows refuses as file names whatever the extension.
_DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{n}" for n in range(10)} | {f"lpt{n}" for n in range(10)}
)


def is_safe_key(key: str) -> bool:
    """Whether ``key`` can be used as a path component and partition value as it is."""
    return (
        0 < len(key) <= MAX_KEY_LENGTH
        and _SAFE.fullmatch(key) is not None
        and ".." not in key
        and not key.endswith(".")
        and key.split(".", 1)[0] not in _DEVICE_NAMES
    )


def _escaped(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = _DOTS.sub(".", _UNSAFE.sub("-", ascii_name)).strip(".-_")
    slug = slug[: MAX_KEY_LENGTH - _DIGEST_CHARS - 1].rstrip(".-_") or "batch"
    if slug.split(".", 1)[0] in _DEVICE_NAMES:
        slug = f"x-{slug}"
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    return f"{slug}-{digest}"


def batch_key_for(name: str) -> str:
    """A safe, collision-free batch key for a user-supplied name (usually a file stem).

    Safe names pass through unchanged, so ``prompts/spring-sale.csv`` is batch
    ``spring-sale``; anything else is slugified and suffixed with a hash of the original.
    The result always satisfies :func:`is_safe_key`.
    """
    if is_safe_key(name) and not _ESCAPED_SUFFIX.search(name):
        return name
    return _escaped(name)


def batch_key_from(option: str | None, file_stem: str) -> str:
    """The batch key for a run: ``--batch`` as given when it is already a safe key (so a key
    copied from a listing names the same batch), else the escaped option or file stem."""
    if option and is_safe_key(option):
        return option
    return batch_key_for(option or file_stem)


def tag_key_for(tag: str) -> str:
    """The same escaping for a tag that becomes part of a key, file or folder name.

    Tags stay as written in the metadata ``tags`` column; only code that builds a path from
    a tag (exports, per-tag reports) needs this.
    """
    return batch_key_for(tag)


def image_key(record_id: str, created_day: str) -> str:
    """Object key of a stored image: date prefix for lifecycle listing, then the record id.

    Both parts are checked, so a malformed id or date can never produce a key outside
    ``images/``.
    """
    if not is_safe_key(record_id) or not _DAY.fullmatch(created_day):
        raise ValueError(f"cannot build an image key from {record_id!r} and {created_day!r}")
    year, month, day = created_day.split("-")
    return f"images/{year}/{month}/{day}/{record_id}.png"

"""Tags changed after the fact: an UPDATE of ``generations`` plus an audit record.

``tag ID --add keep`` changes the row's ``tags`` in the table itself (no log merged at read
time), so every reader, ours or a plain DuckDB client, sees the same tags, and retention
reads them from the same place. The new list is computed inside the MERGE from the row's
tags in the version the commit is checked against, so two people tagging at once lose
neither change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from ideogram_pipeline.history.record_ids import resolve_current
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.settings import Settings

__all__ = ["MAX_TAG_LENGTH", "TagChange", "TagError", "change_tags", "validate_tag"]

MAX_TAG_LENGTH = 64

# Removes first, then adds not already there, keeping the existing order. ``array_except(s.
# add, s.add)`` is a typed empty list (a row may have no tags at all).
_NEW_TAGS = (
    "array_concat("
    "array_except(coalesce(t.tags, array_except(s.add, s.add)), s.remove), "
    "array_except(s.add, coalesce(t.tags, array_except(s.add, s.add))))"
)


class TagError(ValueError):
    """A tag or a tag change is not acceptable; the message says which and why."""


@dataclass(frozen=True)
class TagChange:
    """One ``tag`` command: the records changed and what was done to them."""

    records: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    #: The full ids the command's ids (or prefixes) resolved to.
    ids: tuple[str, ...] = ()


def validate_tag(tag: str) -> str:
    """A clean tag: trimmed, 1..64 characters, no ``|`` (the CSV separator), no controls."""
    value = tag.strip()
    if not value:
        raise TagError("a tag cannot be empty")
    if len(value) > MAX_TAG_LENGTH:
        raise TagError(f"tag {value[:20]!r}... is longer than {MAX_TAG_LENGTH} characters")
    if "|" in value or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise TagError(f"tag {value!r} may not contain '|' or control characters")
    return value


def change_tags(
    settings: Settings,
    record_ids: Sequence[str],
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
) -> TagChange:
    """Remove, then add, tags on every record in ``record_ids`` (full ids or unique
    prefixes of current rows; see ``record_ids.py``)."""
    added = tuple(dict.fromkeys(validate_tag(tag) for tag in add))
    removed = tuple(dict.fromkeys(validate_tag(tag) for tag in remove))
    if not added and not removed:
        raise TagError("nothing to change: give --add and/or --remove")
    both = sorted(set(added) & set(removed))
    if both:
        raise TagError(f"tag {both[0]!r} is both added and removed")
    if not record_ids:
        raise TagError("no record ids given")
    located = resolve_current(settings, record_ids, "tagged")
    ids = sorted({i for found in located.values() for i in found})
    tags = pa.list_(pa.string())
    source = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "add": pa.array([list(added)] * len(ids), tags),
            "remove": pa.array([list(removed)] * len(ids), tags),
        }
    )
    changed = HistoryTables(settings).change(
        located, event="tag", updates={"tags": _NEW_TAGS}, source=source
    )
    return TagChange(changed, added, removed, tuple(ids))

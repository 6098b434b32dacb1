"""Pins: records that retention never deletes, as the ``pinned`` column of ``generations``.

``pin ID`` and ``unpin ID`` UPDATE the row and append an audit record (``event`` ``pin`` or
``unpin``, with ``recorded_at``) to ``generation_records``, so the audit trail says what
was pinned and when. The ``keep`` tag (``[retention] keep_tags``) protects a record too;
pins exist for records whose tags a person does not want to change.

Ids go through :mod:`~ideogram_pipeline.history.record_ids` like every other command's: a
unique prefix works, and an id that names nothing or several records is an error, never a
pin that silently did nothing (the record would then be lost to the next cleanup).

A superseded record (a later attempt at its row replaced it in ``generations``) can be
pinned too: its pin is the audit record alone, which retention reads for records that are
no longer current (their newest record's ``pinned``). Whatever a person pinned stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from ideogram_pipeline.history.layout import GENERATIONS, RECORDS
from ideogram_pipeline.history.record_ids import locate_records
from ideogram_pipeline.history.schema import TABLE_SCHEMA
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.settings import Settings

__all__ = ["PinChange", "set_pinned"]


@dataclass(frozen=True)
class PinChange:
    """What a ``pin`` or ``unpin`` did: the full ids changed, those already so, and which
    of them are superseded records (pinned in the audit trail only)."""

    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    superseded: tuple[str, ...] = ()


def _newest_rows(settings: Settings, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each id's newest row of table ``name`` (by ``recorded_at``), as a dict."""
    from ideogram_pipeline.history.views import read_rows

    newest: dict[str, dict[str, Any]] = {}
    for row in read_rows(settings, name, ids).to_pylist():
        held = newest.get(row["id"])
        stamp = row["recorded_at"] or row["created_at"]
        if held is None or stamp >= (held["recorded_at"] or held["created_at"]):
            newest[row["id"]] = row
    return newest


def _pin_superseded(settings: Settings, ids: Sequence[str], pinned: bool) -> list[str]:
    """Append a pin (unpin) record for superseded records not already so; their ids."""
    newest = _newest_rows(settings, RECORDS, ids)
    changed = [row for row in newest.values() if bool(row["pinned"]) != pinned]
    if not changed:
        return []
    now = datetime.now(UTC)
    for row in changed:
        row.update(pinned=pinned, event="pin" if pinned else "unpin", recorded_at=now)
    HistoryTables(settings).append(RECORDS, pa.Table.from_pylist(changed, schema=TABLE_SCHEMA))
    return sorted(row["id"] for row in changed)


def set_pinned(settings: Settings, record_ids: Sequence[str], pinned: bool) -> PinChange:
    """Pin (or unpin) the records these ids (full or unique prefixes) name.

    Raises :class:`~ideogram_pipeline.history.record_ids.RecordIdError` before changing
    anything when one id names no record or several.
    """
    located = locate_records(settings, record_ids)
    current_ids = sorted({i for found in located.current.values() for i in found})
    rows = _newest_rows(settings, GENERATIONS, current_ids) if current_ids else {}
    now = {record_id: bool(row["pinned"]) for record_id, row in rows.items()}
    to_change = {
        batch: [i for i in found if now.get(i) != pinned]
        for batch, found in located.current.items()
    }
    to_change = {batch: found for batch, found in to_change.items() if found}
    if to_change:
        HistoryTables(settings).change(
            to_change, event="pin" if pinned else "unpin", updates={"pinned": str(pinned).lower()}
        )
    changed = [i for found in to_change.values() for i in found]
    if located.superseded:
        changed += _pin_superseded(settings, located.superseded, pinned)
    everything = set(current_ids) | set(located.superseded)
    return PinChange(
        tuple(sorted(changed)), tuple(sorted(everything - set(changed))), located.superseded
    )

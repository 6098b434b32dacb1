"""Pins: records that retention never deletes, as the ``pinned`` column of ``generations``.

``pin ID`` and ``unpin ID`` UPDATE the row and append an audit record (``event`` ``pin`` or
``unpin``, with ``recorded_at``) to ``generation_records``, so the audit trail says what
was pinned and when. The ``keep`` tag (``[retention] keep_tags``) protects a record too;
pins exist for records whose tags a person does not want to change.
"""

from __future__ import annotations

from collections.abc import Sequence

from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.history.views import locate_current
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage.base import StorageError

__all__ = ["PinError", "set_pinned"]


class PinError(StorageError):
    """The record to pin is not in the current history."""


def set_pinned(settings: Settings, record_ids: Sequence[str], pinned: bool) -> int:
    """Pin (or unpin) the current rows with these full ids; returns the rows changed."""
    located = locate_current(settings, record_ids, PinError, "pinned")
    value = "true" if pinned else "false"
    return HistoryTables(settings).change(
        located, event="pin" if pinned else "unpin", updates={"pinned": value}
    )

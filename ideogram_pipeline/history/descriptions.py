"""Descriptions: Ideogram's text for an image (``describe``), kept on the image's own record.

The engine calls :func:`set_description` after a ``describe`` answers. Like tags and pins,
the text is an UPDATE of the row in ``generations`` (so ``search`` and any plain DuckDB
client see it where the prompt is) plus an audit record (``event`` ``describe``) appended
to ``generation_records`` with the row as it is after the change. The describe request's
own record (``operation`` ``describe``, ``derived_from`` the image, its cost) is the
engine's: it is what the reports bill, this is what people search.

A record a later attempt at its row replaced (no longer in ``generations``) gets the audit
record alone, as a pin does: its newest record carries the description.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from ideogram_pipeline.history.layout import RECORDS
from ideogram_pipeline.history.record_ids import RecordIdError, locate_records
from ideogram_pipeline.history.schema import TABLE_SCHEMA
from ideogram_pipeline.history.tables import HistoryTables

__all__ = [
    "EVENT",
    "MAX_DESCRIPTION_LENGTH",
    "DescriptionChange",
    "set_description",
    "set_descriptions",
    "sync_descriptions",
]

#: The audit event of a description set in place (``generation_records.event``).
EVENT = "describe"
#: Longest description kept (Ideogram's are a paragraph; this bounds a runaway answer).
MAX_DESCRIPTION_LENGTH = 10_000


@dataclass(frozen=True)
class DescriptionChange:
    """What :func:`set_description` did: the record's full id, the text kept, and whether
    the record is a current row (False: superseded, described in the audit trail only)."""

    record_id: str
    description: str
    current: bool


def _clean(text: str) -> str:
    """Trimmed, control characters other than newlines and tabs dropped, at most
    :data:`MAX_DESCRIPTION_LENGTH` characters; an empty result is refused."""
    kept = "".join(ch for ch in text if ch in "\n\t" or (ch >= " " and ch != "\x7f")).strip()
    if not kept:
        raise ValueError("a description cannot be empty")
    return kept[:MAX_DESCRIPTION_LENGTH]


def set_description(tables: HistoryTables, record_id: str, text: str) -> DescriptionChange:
    """Set the ``description`` of the record ``record_id`` names (a full id or a unique
    prefix) to ``text``, in place, and append the ``describe`` audit record.

    Raises :class:`~ideogram_pipeline.history.record_ids.RecordIdError` when the id names
    no record or several, ``ValueError`` when ``text`` is empty. Setting the same text
    again writes again (the audit trail says when each describe answered).
    """
    description = _clean(text)
    located = locate_records(tables.settings, [record_id])
    if located.current:
        (batch, (full_id,)), *_ = located.current.items()
        source = pa.table(
            {
                "id": pa.array([full_id], pa.string()),
                "description": pa.array([description], pa.string()),
            }
        )
        tables.change(
            {batch: [full_id]},
            event=EVENT,
            updates={"description": "s.description"},
            source=source,
        )
        return DescriptionChange(full_id, description, current=True)
    if not located.superseded:
        raise RecordIdError(f"no record with id {record_id!r}")  # pragma: no cover
    full_id = located.superseded[0]
    _describe_superseded(tables, full_id, description)
    return DescriptionChange(full_id, description, current=False)


def set_descriptions(tables: HistoryTables, texts: Mapping[str, str]) -> int:
    """Set many records' descriptions at once (full ids -> text): one UPDATE per batch
    rather than one per record, as a run of ``describe`` over a selection needs. Ids no
    longer in the history (deleted since) are left out; returns how many were set."""
    cleaned = {record_id: _clean(text) for record_id, text in texts.items() if text.strip()}
    if not cleaned:
        return 0
    located = locate_records(tables.settings, sorted(cleaned))
    for batch, ids in located.current.items():
        source = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "description": pa.array([cleaned[i] for i in ids], pa.string()),
            }
        )
        tables.change(
            {batch: ids}, event=EVENT, updates={"description": "s.description"}, source=source
        )
    for record_id in located.superseded:
        _describe_superseded(tables, record_id, cleaned[record_id])
    return sum(len(ids) for ids in located.current.values()) + len(located.superseded)


def sync_descriptions(tables: HistoryTables, batch: str) -> int:
    """Give each image ``batch`` described the text of its newest ``describe`` record,
    where its ``description`` differs; returns how many changed.

    Worked out from the history rather than from what a run remembers, so a run killed
    after writing its describe records and before this step is made whole by the next run
    of the batch (whose describe rows are done and send nothing).
    """
    from ideogram_pipeline.history.layout import GENERATIONS
    from ideogram_pipeline.history.views import connect
    from ideogram_pipeline.safe_output import sql_literal

    con = connect(tables.settings, views=(GENERATIONS,))
    try:
        # A literal, not a bound parameter: binding one makes DuckDB import pandas
        # (0.4 s), as the run's other history reads avoid (BENCHMARKS.md section 8).
        # The newest describe of each source this batch described, whichever batch made
        # it: re-running an older describe batch never writes its older text back.
        rows = con.execute(
            "WITH described AS (SELECT DISTINCT derived_from FROM generations "
            f"  WHERE batch = {sql_literal(batch)} AND operation = 'describe' "
            "  AND status = 'stored'), "
            "newest AS (SELECT d.derived_from AS id, "
            "  arg_max(d.description, d.created_at) AS text FROM generations d "
            "  WHERE d.derived_from IN (SELECT derived_from FROM described) "
            "  AND d.operation = 'describe' AND d.status = 'stored' "
            "  AND d.description IS NOT NULL GROUP BY d.derived_from) "
            "SELECT n.id, n.text FROM newest n JOIN generations s ON s.id = n.id "
            "WHERE s.description IS DISTINCT FROM n.text"
        ).fetchall()
    finally:
        con.close()
    return set_descriptions(tables, {str(i): str(text) for i, text in rows})


def _describe_superseded(tables: HistoryTables, record_id: str, description: str) -> None:
    """Append the record's newest version with the description (its audit trail only)."""
    from ideogram_pipeline.history.views import read_rows

    rows = read_rows(tables.settings, RECORDS, [record_id]).to_pylist()
    newest = max(rows, key=lambda row: row["recorded_at"] or row["created_at"])
    newest.update(description=description, event=EVENT, recorded_at=datetime.now(UTC))
    tables.append(RECORDS, pa.Table.from_pylist([newest], schema=TABLE_SCHEMA))

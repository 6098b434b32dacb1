"""Record ids as people type them: the one place a full id or a prefix becomes a record.

Every command that takes a record id (``pin``, ``unpin``, ``tag``, ``reproduce``,
``inspect``, ``share``, ...) resolves it here, so they all accept the same thing: a full id
or a unique prefix of at least :data:`MIN_ID_PREFIX` characters, in any case. A prefix that
begins several records is refused with the candidates listed (batch, row, status, time),
so the person can pick one instead of guessing; an id that names nothing is an error,
never a silent no-op (a pin that did nothing is how an image got lost to cleanup).

Ids are resolved against ``generation_records`` (every record ever written), so a prefix
means the same thing whichever command it is given to; :func:`resolve_current` then says
which of the resolved records are current rows of ``generations`` (what tags and pins
change in place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ideogram_pipeline.safe_output import sql_list

if TYPE_CHECKING:
    import duckdb

    from ideogram_pipeline.settings import Settings

__all__ = [
    "MAX_CANDIDATES_SHOWN",
    "MIN_ID_PREFIX",
    "IdCandidate",
    "LocatedRecords",
    "RecordIdError",
    "locate_records",
    "resolve_current",
    "resolve_ids",
]

#: Shortest id prefix accepted where a record id is expected.
MIN_ID_PREFIX = 6
#: Candidates listed for an ambiguous prefix (the count says how many there are).
MAX_CANDIDATES_SHOWN = 10


class RecordIdError(ValueError):
    """An id is too short, names no record, names several, or is not the kind wanted; the
    message says which id and, for an ambiguous prefix, lists the records it begins."""


@dataclass(frozen=True)
class IdCandidate:
    """One record an id prefix begins: enough to tell records apart at a glance."""

    id: str
    batch: str
    row: int | None
    image_index: int | None
    status: str
    created_at: datetime | None

    def describe(self) -> str:
        when = self.created_at.strftime("%Y-%m-%d %H:%M") if self.created_at else "-"
        return (
            f"{self.id} (batch {self.batch}, row {self.row}, image {self.image_index}, "
            f"{self.status}, {when})"
        )


def _normalised(ids: Sequence[str]) -> list[str]:
    wanted = [value.strip().lower() for value in ids]
    short = [value for value in wanted if len(value) < MIN_ID_PREFIX]
    if short:
        raise RecordIdError(
            f"record id {short[0]!r} is too short: give the full id or a unique prefix of "
            f"at least {MIN_ID_PREFIX} characters"
        )
    return wanted


def _candidates(con: duckdb.DuckDBPyConnection, wanted: list[str]) -> dict[str, list[IdCandidate]]:
    """Prefix -> the records (one per id, its newest generation record) it begins."""
    # Literals, not bound parameters: binding a list imports pandas (half a second).
    rows = con.execute(
        'WITH records AS (SELECT id, batch, "row", image_index, status, created_at '
        "FROM generation_records "
        "QUALIFY row_number() OVER (PARTITION BY id ORDER BY "
        "coalesce(event, 'generate') = 'generate' DESC, recorded_at DESC NULLS LAST) = 1) "
        f'SELECT p.prefix, r.id, r.batch, r."row", r.image_index, r.status, r.created_at '
        f"FROM unnest({sql_list(wanted)}::VARCHAR[]) AS p(prefix) "
        "JOIN records AS r ON starts_with(r.id, p.prefix) ORDER BY r.created_at DESC, r.id"
    ).fetchall()
    found: dict[str, list[IdCandidate]] = {value: [] for value in wanted}
    for prefix, *columns in rows:
        found[prefix].append(IdCandidate(*columns))
    return found


def _ambiguous(value: str, candidates: list[IdCandidate]) -> str:
    shown = "; ".join(c.describe() for c in candidates[:MAX_CANDIDATES_SHOWN])
    more = len(candidates) - MAX_CANDIDATES_SHOWN
    rest = f"; and {more} more" if more > 0 else ""
    return (
        f"id {value!r} is ambiguous: it begins {len(candidates)} records ({shown}{rest}); "
        "give more characters"
    )


def resolve_ids(con: duckdb.DuckDBPyConnection, ids: Sequence[str]) -> list[str]:
    """Full record ids for ``ids`` (full ids or unique prefixes), each once, in order.

    ``con`` needs the ``generation_records`` view. Raises :class:`RecordIdError` naming
    every id that is too short, matches nothing, or matches more than one record.
    """
    wanted = _normalised(ids)
    if not wanted:
        return []
    found = _candidates(con, wanted)
    problems = []
    for value in dict.fromkeys(wanted):
        candidates = found[value]
        exact = [c for c in candidates if c.id == value]
        if exact:
            found[value] = exact  # a full id is never ambiguous, even if it prefixes another
        elif not candidates:
            problems.append(f"no record with id {value!r}")
        elif len(candidates) > 1:
            problems.append(_ambiguous(value, candidates))
    if problems:
        raise RecordIdError("; ".join(problems))
    return list(dict.fromkeys(found[value][0].id for value in wanted))


@dataclass(frozen=True)
class LocatedRecords:
    """Resolved records split by where they are: current rows of ``generations`` grouped
    by batch, and records a later attempt at their row replaced (only in the audit trail)."""

    current: dict[str, list[str]]
    superseded: tuple[str, ...]


def locate_records(settings: Settings, ids: Sequence[str]) -> LocatedRecords:
    """Resolve ``ids`` (full ids or unique prefixes) and say which are current rows.

    Raises :class:`RecordIdError` for an id :func:`resolve_ids` refuses.
    """
    from ideogram_pipeline.history.layout import GENERATIONS, RECORDS
    from ideogram_pipeline.history.views import connect

    con = connect(settings, views=(RECORDS, GENERATIONS))
    try:
        full_ids = resolve_ids(con, ids)
        if not full_ids:
            return LocatedRecords({}, ())
        rows = con.execute(
            "SELECT batch, list(DISTINCT id ORDER BY id) FROM generations "
            f"WHERE id IN (SELECT unnest({sql_list(full_ids)})) GROUP BY batch"
        ).fetchall()
    finally:
        con.close()
    current = {batch: list(found) for batch, found in rows}
    known = {i for found in current.values() for i in found}
    return LocatedRecords(current, tuple(i for i in full_ids if i not in known))


def resolve_current(settings: Settings, ids: Sequence[str], verb: str) -> dict[str, list[str]]:
    """The records ``ids`` name (full ids or unique prefixes), as current rows of
    ``generations`` grouped by batch: what tags change in place.

    Raises :class:`RecordIdError` for an id :func:`resolve_ids` refuses, or one whose
    record a later attempt replaced (``verb`` says what cannot be done to it).
    """
    located = locate_records(settings, ids)
    if located.superseded:
        raise RecordIdError(
            f"record {located.superseded[0]} is no longer a current image (a later attempt "
            "at its row replaced it; `search --all-runs` lists it): only current images can "
            f"be {verb}"
        )
    return located.current

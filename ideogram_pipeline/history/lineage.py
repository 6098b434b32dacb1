"""Lineage: which image an image was made from, and what was made from it.

A derived image (an upscale, a remix, a reframe, ...) is a record of its own whose
``derived_from`` names its source record. :func:`lineage` follows that column both ways
from one record: up to its ancestors (source, source's source, ...) and down to its
descendants (records whose ``derived_from`` is it, recursively).

Records are read from ``generations_all`` (rows that left their batch's file still have
their images). A record found there is ``current``; one a later attempt at its row
replaced is read from ``generation_records`` (``superseded``); one retention deleted is
known only by what it left in ``usage_rollup`` (``deleted``: its operation, status, time,
and its own ``derived_from``, so the chain goes on past it); an id found nowhere is
``missing``. Retention deletes each record on its own (``lifecycle/retention.py``), so a
deleted original keeps its descendants and they show it as deleted.

Plain Python over one DuckDB connection; each step reads by id, which DuckDB pushes into
the tables' scans, so a lineage costs a few small queries whatever the history's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from ideogram_pipeline.history.layout import GENERATIONS, GENERATIONS_ALL, RECORDS, USAGE
from ideogram_pipeline.history.record_ids import resolve_ids
from ideogram_pipeline.safe_output import sql_list
from ideogram_pipeline.storage.public_urls import public_url

if TYPE_CHECKING:
    import duckdb

    from ideogram_pipeline.settings import Settings

__all__ = ["MAX_DEPTH", "Lineage", "LineageNode", "NodeState", "lineage", "read_lineage"]

#: Generations followed each way; a longer chain (or a cycle a hand-edited table made)
#: stops there rather than looping.
MAX_DEPTH = 100

NodeState = Literal["current", "superseded", "deleted", "missing"]

_EARLIEST = datetime.min.replace(tzinfo=UTC)
_COLUMNS = (
    "id, derived_from, operation, status, created_at, batch, stored_uri, image_key, public_url"
)
#: Each id's newest record (a tag, pin or describe appends one: the newest is the latest).
_NEWEST = "QUALIFY row_number() OVER (PARTITION BY id ORDER BY recorded_at DESC NULLS LAST) = 1"


@dataclass(frozen=True)
class LineageNode:
    """One record of a lineage. ``depth``: negative for ancestors (-1 the source), 0 the
    record asked about, positive for descendants (1 made from it)."""

    id: str
    depth: int
    #: ``generate`` for a generation (the column is null for those).
    operation: str
    state: NodeState
    #: The record's status; ``deleted`` for a record retention deleted.
    status: str
    created_at: datetime | None
    derived_from: str | None = None
    batch: str | None = None
    stored_uri: str | None = None
    public_url: str | None = None
    #: When retention deleted it (``deleted`` only).
    deleted_at: datetime | None = None

    @property
    def deleted(self) -> bool:
        return self.state == "deleted"

    @property
    def location(self) -> str:
        """Where the image is (public URL first, then stored URI), or why there is none."""
        if self.state == "deleted":
            when = f" on {self.deleted_at:%Y-%m-%d}" if self.deleted_at else ""
            return f"deleted by retention{when}"
        if self.state == "missing":
            return "no record with this id"
        return self.public_url or self.stored_uri or ""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "deleted": self.deleted, "location": self.location}


@dataclass(frozen=True)
class Lineage:
    """A record with its ancestors (nearest first) and descendants (depth first, each
    after its source, siblings oldest first)."""

    record: LineageNode
    ancestors: tuple[LineageNode, ...]
    descendants: tuple[LineageNode, ...]

    def nodes(self) -> list[LineageNode]:
        """Every node from the oldest ancestor down: the order a listing shows them."""
        return [*reversed(self.ancestors), self.record, *self.descendants]

    def as_dict(self) -> dict[str, Any]:
        return {
            "record": self.record.as_dict(),
            "ancestors": [n.as_dict() for n in self.ancestors],
            "descendants": [n.as_dict() for n in self.descendants],
        }


def _node(row: tuple[Any, ...], depth: int, state: NodeState, base: str | None) -> LineageNode:
    record_id, derived_from, operation, status, created_at, batch, uri, key, url = row
    stored = status == "stored" and state != "deleted"
    return LineageNode(
        id=record_id,
        depth=depth,
        operation=operation or "generate",
        state=state,
        status=status,
        created_at=created_at,
        derived_from=derived_from,
        batch=batch,
        stored_uri=uri if stored else None,
        public_url=(url or public_url(base, key)) if stored else None,
    )


class _Reader:
    """The three places a record can be, read by id."""

    def __init__(self, con: duckdb.DuckDBPyConnection, base: str | None) -> None:
        self.con = con
        self.base = base

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()

    def find(self, ids: Sequence[str], depth: int) -> dict[str, LineageNode]:
        """The nodes of ``ids``, wherever they are (``missing`` when nowhere)."""
        found: dict[str, LineageNode] = {}
        # Current rows first, then records a later attempt replaced, then deleted ones.
        places: tuple[tuple[str, NodeState], ...] = (
            (GENERATIONS_ALL, "current"),
            (RECORDS, "superseded"),
        )
        for table, state in places:
            rest = [i for i in ids if i not in found]
            if not rest:
                break
            for row in self._rows(
                f"SELECT {_COLUMNS} FROM {table} WHERE id IN (SELECT unnest({sql_list(rest)})) "
                f"{_NEWEST}"
            ):
                found[row[0]] = _node(row, depth, state, self.base)
        rest = [i for i in ids if i not in found]
        if rest:
            found.update(self._deleted(f"id IN (SELECT unnest({sql_list(rest)}))", depth))
        for record_id in ids:
            if record_id not in found:
                found[record_id] = LineageNode(record_id, depth, "generate", "missing", "-", None)
        return found

    def _deleted(self, condition: str, depth: int) -> dict[str, LineageNode]:
        """Records retention deleted (gone from ``generation_records``) matching ``condition``."""
        found = {}
        # Its status before deletion stays in usage_rollup for the reports; here it is deleted.
        for record_id, derived_from, operation, created_at, batch, deleted_at in self._rows(
            "SELECT id, derived_from, operation, created_at, batch, deleted_at "
            f"FROM {USAGE} WHERE {condition} "
            f"AND id NOT IN (SELECT id FROM {RECORDS} WHERE id IS NOT NULL) "
            "QUALIFY row_number() OVER (PARTITION BY id ORDER BY deleted_at DESC) = 1"
        ):
            found[record_id] = LineageNode(
                id=record_id,
                depth=depth,
                operation=operation or "generate",
                state="deleted",
                status="deleted",
                created_at=created_at,
                derived_from=derived_from,
                batch=batch,
                deleted_at=deleted_at,
            )
        return found

    def children(self, ids: Iterable[str], depth: int) -> list[LineageNode]:
        """Records made from any of ``ids``: current ones and deleted ones, oldest first."""
        wanted = f"derived_from IN (SELECT unnest({sql_list(ids)}))"
        nodes = [
            _node(row, depth, "current", self.base)
            for row in self._rows(f"SELECT {_COLUMNS} FROM {GENERATIONS_ALL} WHERE {wanted}")
        ]
        nodes += self._deleted(wanted, depth).values()
        return sorted(nodes, key=lambda n: (n.created_at or _EARLIEST, n.id))


def read_lineage(con: duckdb.DuckDBPyConnection, record_id: str, base: str | None) -> Lineage:
    """The lineage of ``record_id`` (a full id or unique prefix) over ``con`` (a history
    connection with ``generations_all``, ``generation_records`` and ``usage_rollup``).

    Raises :class:`~ideogram_pipeline.history.record_ids.RecordIdError` for an unknown or
    ambiguous id. ``base``: the public base URL (``Settings.public_base_url``).
    """
    (full_id,) = resolve_ids(con, [record_id])
    reader = _Reader(con, base)
    record = reader.find([full_id], 0)[full_id]
    ancestors: list[LineageNode] = []
    seen = {full_id}
    parent = record.derived_from
    while parent and parent not in seen and len(ancestors) < MAX_DEPTH:
        seen.add(parent)
        node = reader.find([parent], -(len(ancestors) + 1))[parent]
        ancestors.append(node)
        parent = node.derived_from
    levels: list[list[LineageNode]] = []
    frontier = [full_id]
    while frontier and len(levels) < MAX_DEPTH:
        level = [n for n in reader.children(frontier, len(levels) + 1) if n.id not in seen]
        seen.update(n.id for n in level)
        if level:
            levels.append(level)
        frontier = [n.id for n in level]
    return Lineage(record, tuple(ancestors), tuple(_depth_first(full_id, levels)))


def _depth_first(root: str, levels: list[list[LineageNode]]) -> list[LineageNode]:
    """The descendants as a tree listing: each node followed by its own descendants."""
    by_source: dict[str, list[LineageNode]] = {}
    for level in levels:
        for node in level:
            by_source.setdefault(node.derived_from or "", []).append(node)
    ordered: list[LineageNode] = []

    def walk(source: str) -> None:
        for node in by_source.get(source, []):
            ordered.append(node)
            walk(node.id)

    walk(root)
    return ordered


def lineage(settings: Settings, record_id: str) -> Lineage:
    """The lineage of ``record_id`` under ``settings``' storage root (see :func:`read_lineage`)."""
    from ideogram_pipeline.history.views import connect

    con = connect(settings, views=(RECORDS, GENERATIONS, GENERATIONS_ALL, USAGE))
    try:
        return read_lineage(con, record_id, settings.public_base_url)
    finally:
        con.close()

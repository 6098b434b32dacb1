"""A batch row's identity is its content, not its line number (issue 17).

A row is what it asks Ideogram to make: its request (prompt, negative prompt, model, style
controls, references, size, seed, number of images: everything
:meth:`~ideogram_pipeline.ideogram.generation.GenerationRequest.request_hash` hashes, which
leaves out the line and the tags) or, for a row that was never sent, its rejection. Two
identical rows of one file are told apart by their occurrence (the first, the second...),
so a file may hold the same row twice and both are kept.

The key is what ``generations`` is merged on (``schema.ROW_KEY``), so inserting, deleting
or reordering rows of a file moves no record: the rows keep their keys and are found again
wherever they now stand, and only rows whose content is new are sent. ``migrate`` keys the
records of earlier releases with the same functions (:func:`record_identity`), so a batch
run before the upgrade is recognised after it.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ideogram_pipeline.history.schema import RowState
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.safe_output import sql_literal

K = TypeVar("K")

if TYPE_CHECKING:
    from ideogram_pipeline.settings import Settings
    from ideogram_pipeline.storage import ObjectStore

__all__ = [
    "FileRow",
    "KeyedRows",
    "keyed_rows",
    "occurrence_keys",
    "record_identity",
    "row_identity",
    "row_key",
    "row_keys",
    "state_by_line",
]

#: The line prefix of a rejection's error text (``row 7: field 'x': ...``), left out of its
#: identity: the same rejection on another line is the same row.
_LINE_PREFIX = re.compile(r"^row \d+: ")


def row_identity(row: GenerationRequest | RejectedRow) -> str:
    """What a row is, whatever line it stands on: its request hash, or its rejection."""
    if isinstance(row, GenerationRequest):
        return row.request_hash()
    return _rejection_identity(row.prompt, f"field '{row.field}': {row.reason}")


def record_identity(request_hash: str | None, prompt: str | None, error: str | None) -> str:
    """:func:`row_identity` of the row a record was written for (the migration's view):
    its request hash, or for a rejected row its prompt and error without the line."""
    if request_hash:
        return request_hash
    return _rejection_identity(prompt or "", _LINE_PREFIX.sub("", error or ""))


def _rejection_identity(prompt: str, error: str) -> str:
    text = f"rejected\n{prompt}\n{error}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_key(identity: str, occurrence: int) -> str:
    """The key of the ``occurrence``-th (0-based) row of a file whose identity is ``identity``."""
    return hashlib.sha256(f"{identity}#{occurrence}".encode()).hexdigest()[:32]


def occurrence_keys(items: Iterable[tuple[K, str]]) -> dict[K, str]:
    """Place -> key for one file's (place, identity) pairs in file order: the n-th row of an
    identity gets occurrence n. A run and the migration both key rows through here, so
    the first run after an upgrade finds what the migration keyed."""
    seen: Counter[str] = Counter()
    keys: dict[K, str] = {}
    for place, identity in items:
        keys[place] = row_key(identity, seen[identity])
        seen[identity] += 1
    return keys


def row_keys(rows: Iterable[GenerationRequest | RejectedRow]) -> dict[int, str]:
    """Line -> key for the rows of one file, in file order."""
    return occurrence_keys((row.row, row_identity(row)) for row in rows)


@dataclass(frozen=True)
class FileRow:
    """Where a keyed row stands in ``generations`` now: its line and whether it is in the file."""

    row: int
    in_file: bool | None


@dataclass(frozen=True)
class KeyedRows:
    """A batch's recorded rows by key: their state for a re-run and where they stand."""

    states: dict[str, RowState]
    places: dict[str, FileRow]
    #: Rows written by an earlier release and not yet keyed (``migrate`` keys them).
    unkeyed: int = 0


def keyed_rows(settings: Settings, store: ObjectStore, batch: str) -> KeyedRows:
    """The batch's rows in ``generations`` (in the file or not), by row key."""
    from ideogram_pipeline.history.layout import GENERATIONS
    from ideogram_pipeline.history.views import connect

    con = connect(settings, store, views=(GENERATIONS,))
    try:
        rows = con.execute(
            "SELECT row_key, any_value(request_hash), list(DISTINCT status), any_value(error), "
            "any_value(attempt_id), "
            # An image whose storage failed is still to be finished from the ledger (and a
            # row whose every image did so has no finished index at all, not a NULL list).
            "coalesce(list(DISTINCT image_index) "
            "FILTER (coalesce(failure_kind, '') <> 'storage'), []), "
            'bool_or(coalesce(simulated, false)), min("row"), bool_and(in_file), count(*) '
            # A literal, not a bound parameter: binding one imports pandas (0.4 s before a
            # run's first request; history/duckdb_s3.py).
            f"FROM generations WHERE batch = {sql_literal(batch)} GROUP BY row_key"
        ).fetchall()
    finally:
        con.close()
    states: dict[str, RowState] = {}
    places: dict[str, FileRow] = {}
    unkeyed = 0
    for key, request_hash, statuses, error, attempt, indexes, simulated, line, in_file, n in rows:
        if key is None:
            unkeyed += int(n)
            continue
        states[key] = RowState(
            request_hash, frozenset(statuses), error, attempt, frozenset(indexes), bool(simulated)
        )
        places[key] = FileRow(int(line), in_file)
    return KeyedRows(states, places, unkeyed)


def state_by_line(keys: Mapping[int, str], states: Mapping[str, RowState]) -> dict[int, RowState]:
    """The recorded state of each line of the file, found by its row's key (wherever the
    row stood when it was recorded): what the engine and the estimate go by."""
    return {line: states[key] for line, key in keys.items() if key in states}

"""A row's ledger entries follow it when the row moves to another line of the file.

The ledger (``ledger.py``) files each event under the row's line and request hash,
``ledger/<batch>/<row:06d>-<hash16>/...``, and the engine looks entries up by line. A row
is known by its content (``history/row_keys.py``), and every event names its row's key, so
before a run the events of rows that moved are rewritten under their new line (written at
the new key first, then deleted at the old one: a crash between leaves a copy that the
next run moves again, never a lost entry).

The journals of killed runs (``journal.py``) are replayed first: ``Ledger.load`` would
otherwise copy their events into the store at the line they were written for, after the
move, and the row would find a stale attempt at its old line. So when anything is to move,
the journals' missing events are copied to the store, the attempts they withdrew are
deleted from it, and the journals are removed; then the store alone is the ledger.

:func:`entries_by_key` is the read-only side, for estimates: the newest attempt of each
row key, from the store and the journals, with nothing written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ideogram_pipeline.runs.journal import Journal
from ideogram_pipeline.runs.ledger import (
    LEDGER_PREFIX,
    LOAD_THREADS,
    WITHDRAWN,
    Ledger,
    LedgerEntry,
    LedgerEvent,
    newest_entries,
)
from ideogram_pipeline.storage import ObjectStore

__all__ = ["entries_by_key", "realign_ledger"]


def _stored_events(store: ObjectStore, batch: str) -> list[tuple[str, LedgerEvent]]:
    """Every event of the batch's ledger in the store, with its object key."""
    keys = [
        info.key for info in store.list(f"{LEDGER_PREFIX}/{batch}/") if info.key.endswith(".json")
    ]
    if not keys:
        return []
    with ThreadPoolExecutor(min(LOAD_THREADS, len(keys))) as pool:
        bodies = list(pool.map(store.get_bytes, keys))
    return [(key, json.loads(raw)) for key, raw in zip(keys, bodies, strict=True)]


def _journal_events(directory: Path, batch: str) -> list[LedgerEvent]:
    """The events of the journals killed runs left for this batch (read only)."""
    return [body for path in Journal(directory, batch).earlier() for body in Journal.read(path)]


def _key_of(body: LedgerEvent, keys: Mapping[int, str], hashes: Mapping[int, str]) -> str | None:
    """The row key an event belongs to: the one it names, or (an event of an earlier
    release) the key of the row now on its line when that row is the same request."""
    if body.get("row_key"):
        return str(body["row_key"])
    line = int(body["row"])
    return keys.get(line) if hashes.get(line) == body.get("request_hash") else None


def entries_by_key(
    store: ObjectStore,
    batch: str,
    directory: Path,
    keys: Mapping[int, str],
    hashes: Mapping[int, str],
) -> dict[str, LedgerEntry]:
    """The newest ledger attempt of each row key of the file (``keys``: line -> key,
    ``hashes``: line -> request hash), wherever its events were filed; writes nothing."""
    bodies = [body for _key, body in _stored_events(store, batch)]
    bodies += _journal_events(directory, batch)
    grouped: dict[str, list[LedgerEvent]] = defaultdict(list)
    for body in bodies:
        if (key := _key_of(body, keys, hashes)) is not None:
            grouped[key].append(body)
    found: dict[str, LedgerEntry] = {}
    for key, events in grouped.items():
        entries = newest_entries(events).values()
        if entries:
            found[key] = max(entries, key=lambda entry: entry.attempt_id)
    return found


def _misplaced(body: LedgerEvent, lines: Mapping[str, int]) -> int | None:
    """The line an event belongs on now, when that is not where it was filed."""
    key = body.get("row_key")
    line = lines.get(str(key)) if key else None
    return line if line is not None and line != int(body["row"]) else None


def realign_ledger(store: ObjectStore, batch: str, directory: Path, keys: Mapping[int, str]) -> int:
    """Refile the events of rows that moved under their row's current line (``keys``: line
    -> row key of the file being run). Call with the batch's lease held, before the engine
    loads the ledger. Returns the events moved."""
    lines = {key: line for line, key in keys.items()}
    journaled = _journal_events(directory, batch)
    stored = _stored_events(store, batch)
    if not any(_misplaced(body, lines) is not None for _, body in stored) and not any(
        _misplaced(body, lines) is not None for body in journaled
    ):
        return 0
    # Replay the journals into the store, drop what they withdrew, then remove them.
    ledger = Ledger(store, batch, Journal(directory, batch))
    ledger.load()
    withdrawn = {
        (body["row"], body["request_hash"], body["attempt_id"])
        for body in journaled
        if body.get("event") == WITHDRAWN
    }
    stored = _stored_events(store, batch)
    void = [
        key
        for key, body in stored
        if (body["row"], body["request_hash"], body["attempt_id"]) in withdrawn
    ]
    if void:
        store.delete(sorted(void))
    ledger.finish_journal()
    written: set[str] = set()
    old: list[str] = []
    for key, body in stored:
        if key in void or (line := _misplaced(body, lines)) is None:
            continue
        moved = {**body, "row": line}
        ledger.replicate(moved)
        written.add(ledger.event_key(moved))
        old.append(key)
    doomed = sorted(set(old) - written)
    if doomed:
        store.delete(doomed)
    return len(old)

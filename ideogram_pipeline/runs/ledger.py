"""A durable per-batch ledger of paid work: what was asked, and what came back.

Ideogram takes no idempotency key, so the only defence against paying twice is to write
down, before each request, that it is about to be sent, and, as soon as an answer arrives,
what it was (the generation id, the image URLs and their seeds), before spending time on
downloads. A later run reads the ledger and:

- polls a recorded ``generation_id`` instead of submitting again (asynchronous mode);
- downloads recorded image URLs that are still valid instead of generating again;
- reports a request with an intent but no answer as ``unknown`` (possibly billed: a
  synchronous request may have run on Ideogram's side after the connection dropped), and
  sends it again only when the user says so.

Each event is one small JSON object written whole through the :class:`ObjectStore`, so the
ledger lives beside the images (it survives the machine) and a crash can never leave half an
entry. Every event is first appended to a local journal (``journal.py``) on the
submitting task's own path, so it is durable in microseconds; :meth:`Ledger.load` merges
both. On an S3 root each event is copied here in the background. On a local root the
journal lies in the root itself, so events stay there while the run lasts
(``defer_replicas``) and only those of rows the run leaves open are copied at its end.
Layout::

    ledger/<batch>/<row>-<request hash>/<attempt id>.<n>-<event>.json

Attempt ids start with a nanosecond timestamp, so the newest attempt sorts last.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ideogram_pipeline.ideogram.generation import (
    GeneratedImage,
    GenerationRequest,
    GenerationResponse,
)
from ideogram_pipeline.runs.journal import Journal
from ideogram_pipeline.storage import ObjectStore

__all__ = [
    "LEDGER_PREFIX",
    "Ledger",
    "LedgerEntry",
    "LedgerEvent",
    "attempt_day",
    "new_attempt_id",
    "newest_entries",
]

LEDGER_PREFIX = "ledger"
_EVENTS = {"intent": 1, "submitted": 2, "result": 3}
#: Journal-only event: the run stopped before the request left, so its intent is void.
WITHDRAWN = "withdrawn"
#: Parallel reads when loading a large ledger (one GET per event on S3).
LOAD_THREADS = 16
#: Longest a run waits for a killed run's submitting process to journal the ids of the
#: POSTs it had made (milliseconds, as a rule; a row whose id is still missing is unknown).
ANSWER_WAIT_S = 60.0


#: One ledger event as written: ``event``, ``row``, ``request_hash``, ``attempt_id``, ``at``...
LedgerEvent = dict[str, Any]


def new_attempt_id() -> str:
    return f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def attempt_day(attempt_id: str) -> str:
    """The UTC day an attempt started (``YYYY-MM-DD``), fixed for the attempt's lifetime."""
    stamp = datetime.fromtimestamp(int(attempt_id.split("-", 1)[0]) / 1e9, tz=UTC)
    return stamp.date().isoformat()


@dataclass(frozen=True)
class LedgerEntry:
    """Everything recorded about the newest attempt for one (row, request)."""

    row: int
    request_hash: str
    attempt_id: str
    mode: str  # "sync" or "async"
    intent_at: str
    generation_id: str | None = None
    response: GenerationResponse | None = None


class Ledger:
    """Reads and appends a batch's ledger through the store."""

    def __init__(
        self,
        store: ObjectStore,
        batch: str,
        journal: Journal | None = None,
        row_keys: Mapping[int, str] | None = None,
        *,
        defer_replicas: bool = False,
    ) -> None:
        self.store = store
        self.batch = batch
        self.journal = journal
        #: Line -> row key of the batch's file: each event names its row's key, so a later
        #: run finds it when the row has moved (``ledger_lines.py``).
        self.row_keys = row_keys or {}
        #: Journals of earlier runs read by :meth:`load`, deleted once copied to the store.
        self.earlier_journals: list[Path] = []
        # Every entry this object has written or loaded, by row folder, so pruning deletes
        # by key instead of listing the whole ledger after each metadata flush.
        self._known: dict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()
        #: With ``defer_replicas`` (a local root, whose journal lies in the root itself),
        #: events stay in the journal only, by row folder, until the run ends: then those of
        #: rows it left open are copied to the store and the rest are dropped, instead of
        #: three files written (and fsynced) and deleted per row while slots wait.
        self.deferred: dict[str, list[LedgerEvent]] | None = (
            defaultdict(list) if defer_replicas and journal is not None else None
        )

    @staticmethod
    def _folder(row: int, request_hash: str) -> str:
        return f"{row:06d}-{request_hash[:16]}"

    def _key(self, request: GenerationRequest, attempt_id: str, event: str) -> str:
        folder = self._folder(request.row, request.request_hash())
        return f"{LEDGER_PREFIX}/{self.batch}/{folder}/{attempt_id}.{_EVENTS[event]}-{event}.json"

    def _remember(self, key: str) -> None:
        folder = key[len(LEDGER_PREFIX) + len(self.batch) + 2 :].split("/", 1)[0]
        with self._lock:
            self._known[folder].add(key)

    def event_body(
        self, request: GenerationRequest, attempt_id: str, event: str, **data: Any
    ) -> LedgerEvent:
        body: LedgerEvent = {
            "event": event,
            "row": request.row,
            "request_hash": request.request_hash(),
            "attempt_id": attempt_id,
            "at": datetime.now(UTC).isoformat(),
            **data,
        }
        if (key := self.row_keys.get(request.row)) is not None:
            body["row_key"] = key
        return body

    def event_key(self, body: LedgerEvent) -> str:
        """Where event ``body`` is filed in the store."""
        folder = self._folder(int(body["row"]), str(body["request_hash"]))
        event = str(body["event"])
        name = f"{body['attempt_id']}.{_EVENTS[event]}-{event}.json"
        return f"{LEDGER_PREFIX}/{self.batch}/{folder}/{name}"

    def replicate(self, body: LedgerEvent) -> None:
        """Write one event as its own object in the store (blocking: run it in a thread)."""
        key = self.event_key(body)
        self.store.put_bytes(
            key, json.dumps(body, sort_keys=True).encode("utf-8"), content_type="application/json"
        )
        self._remember(key)

    def defer(self, body: LedgerEvent) -> None:
        """Keep journaled ``body`` for :meth:`take_deferred` instead of copying it now."""
        assert self.deferred is not None
        folder = self._folder(int(body["row"]), str(body["request_hash"]))
        with self._lock:
            self.deferred[folder].append(body)

    def take_deferred(self, concluded: Iterable[tuple[int, str]] = ()) -> list[LedgerEvent]:
        """The deferred events still to copy to the store: those of rows not in
        ``concluded`` (whose records are written, so their entries may go)."""
        if self.deferred is None:
            return []
        with self._lock:
            for row, request_hash in concluded:
                self.deferred.pop(self._folder(row, request_hash), None)
            bodies = [body for events in self.deferred.values() for body in events]
            self.deferred.clear()
        return bodies

    def journal_event(
        self, request: GenerationRequest, attempt_id: str, event: str, **data: Any
    ) -> LedgerEvent:
        """Append ``event`` to the journal at once (microseconds, on the caller's own path)
        and return it for :meth:`replicate`; without a journal, write it to the store."""
        body = self.event_body(request, attempt_id, event, **data)
        if self.journal is None:
            self.replicate(body)
        else:
            # Only an intent may fail for want of space: its request is then not sent.
            # Every other event is about money already spent and may use the reserve.
            self.journal.append(body, use_reserve=event != "intent")
        return body

    def withdraw_intent(self, request: GenerationRequest, attempt_id: str) -> None:
        """The run stopped before the request left: no evidence of spending remains, so the
        next run sends the row instead of reporting it ``unknown``. (Call once the intent's
        replica is written, so the deletion cannot come first.)"""
        if self.journal is not None:
            self.journal.append(self.event_body(request, attempt_id, WITHDRAWN), use_reserve=True)
        if self.deferred is not None:
            folder = self._folder(request.row, request.request_hash())
            with self._lock:
                kept = [e for e in self.deferred.get(folder, []) if e["attempt_id"] != attempt_id]
                self.deferred[folder] = kept
        self.store.delete([self._key(request, attempt_id, "intent")])

    def finish_journal(self) -> None:
        """Delete this run's journal and the earlier ones: every event in them is in the
        store by now (call only once every replica write has completed)."""
        if self.journal is not None:
            self.journal.remove(self.earlier_journals)
            self.earlier_journals = []

    @staticmethod
    def result_data(response: GenerationResponse) -> dict[str, Any]:
        """A ``result`` event's fields: what a later run needs to fetch the images."""
        return {
            "generation_id": response.generation_id,
            "created": response.created,
            "images": [asdict(image) for image in response.images],
        }

    def prune(self, concluded: set[tuple[int, str]]) -> int:
        """Delete the entries of rows whose outcome is now in the metadata; returns how many.

        Called only after the metadata is written, so the ledger holds just unfinished work
        and a re-run reads little. A crash halfway leaves entries that the next run sees as
        concluded (their attempt is recorded), so pruning never loses anything.

        Deletes the entries this object wrote or :meth:`load` found (no listing), so the
        engine can prune after every metadata flush at a cost proportional to the flush.
        """
        with self._lock:
            doomed = [
                key
                for row, request_hash in concluded
                for key in self._known.pop(self._folder(row, request_hash), ())
            ]
            if self.deferred is not None:  # never copied, nothing to delete
                for row, request_hash in concluded:
                    self.deferred.pop(self._folder(row, request_hash), None)
        if doomed:
            self.store.delete(sorted(doomed))
        return len(doomed)

    def _journaled(self, stored: set[str]) -> list[LedgerEvent]:
        """Events of the journals earlier runs left, copying to the store those whose
        replica never got written (the run was killed first, or the disk was full), so
        the store stays the whole ledger and those journals can be deleted."""
        if self.journal is None:
            return []
        found = self.journal.earlier()
        # A killed run's POSTs on the wire: their ids. A journal whose writer still holds
        # it after the wait is read now but not deleted at the end: more may come.
        self.earlier_journals = [
            path for path in found if Journal.wait_for_writers(path, ANSWER_WAIT_S)
        ]
        events = [body for path in found for body in Journal.read(path)]
        withdrawn = {
            (body["row"], body["request_hash"], body["attempt_id"])
            for body in events
            if body.get("event") == WITHDRAWN
        }
        for body in events:
            if body.get("event") not in _EVENTS:
                continue
            attempt = (body["row"], body["request_hash"], body["attempt_id"])
            if attempt not in withdrawn and self.event_key(body) not in stored:
                self.replicate(body)
        return events

    def load(self) -> dict[tuple[int, str], LedgerEntry]:
        """The newest attempt per (row, request hash), merged from its events."""
        prefix = f"{LEDGER_PREFIX}/{self.batch}/"
        keys = [info.key for info in self.store.list(prefix) if info.key.endswith(".json")]
        for key in keys:
            self._remember(key)
        # One GET per event: in parallel, or a crashed 10,000-row batch takes minutes to load.
        with ThreadPoolExecutor(min(LOAD_THREADS, max(len(keys), 1))) as pool:
            bodies = list(pool.map(self.store.get_bytes, keys))
        stored: set[str] = set(keys)
        return newest_entries([json.loads(raw) for raw in bodies] + self._journaled(stored))


def newest_entries(bodies: Iterable[LedgerEvent]) -> dict[tuple[int, str], LedgerEntry]:
    """The newest attempt per (row, request hash), merged from ledger events (withdrawn
    attempts and events without an intent left out)."""
    events: dict[tuple[int, str, str], dict[str, Any]] = defaultdict(dict)
    for body in bodies:
        attempt = (int(body["row"]), str(body["request_hash"]), str(body["attempt_id"]))
        events[attempt][body["event"]] = body
    newest: dict[tuple[int, str], LedgerEntry] = {}
    for (row, request_hash, attempt_id), by_event in sorted(events.items()):
        intent = by_event.get("intent")
        if intent is None or WITHDRAWN in by_event:
            continue
        submitted = by_event.get("submitted", {})
        result = by_event.get("result")
        response = None
        if result is not None:
            response = GenerationResponse(
                created=result.get("created"),
                images=tuple(GeneratedImage(**image) for image in result["images"]),
                generation_id=result.get("generation_id"),
            )
        newest[(row, request_hash)] = LedgerEntry(
            row=row,
            request_hash=request_hash,
            attempt_id=attempt_id,
            mode=intent.get("mode", "sync"),
            intent_at=intent["at"],
            generation_id=(result or submitted).get("generation_id")
            or submitted.get("generation_id"),
            response=response,
        )
    return newest

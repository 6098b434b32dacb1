"""A run's writes to its batch's ledger: the journal first, the store's copy behind it.

The two events that guard money (the intent before a request leaves, the generation id the
moment Ideogram accepts it) are appended to the local journal (``journal.py``) on the
sending path itself: by the run's submitting process (``submit_process.py``) for async
submissions, else from the event loop or a submit thread (``ideogram/client.py``); they
are copied to the store's ledger (``ledger.py``) in the background, off the in-flight
slots. On a local root the journal lies in the root and is the ledger while the run lasts:
events are flushed to disk every :data:`JOURNAL_SYNC_S`, and
:meth:`LedgerWriter.all_replicated` copies those of the rows left open at the run's end.
Other ledger writes wait out storage outages like image uploads do: without the record of
an intent, nothing may be sent. A full disk is never waited out: it is handed to
``on_no_space``, which stops the run (``out_of_space.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.submit_channel import JournalLine, SubmitChannel, SubmitLines
from ideogram_pipeline.runs.journal import Journal
from ideogram_pipeline.runs.ledger import ANSWER_WAIT_S, Ledger, LedgerEvent
from ideogram_pipeline.runs.pools import RunPools
from ideogram_pipeline.runs.retrying import StorageRetry, retry_storage
from ideogram_pipeline.storage import LocalStore, NoSpaceLeft

__all__ = ["JOURNAL_SYNC_S", "LedgerWriter"]

logger = logging.getLogger(__name__)

#: Longest a journaled event that is not copied to the store waits for an ``fdatasync``.
JOURNAL_SYNC_S = 0.2


def _sync_quietly(journal: Journal) -> None:
    try:
        journal.sync()
    except OSError as exc:  # the events are still in the page cache: a kill loses nothing
        logger.warning(f"journal {journal.path} not flushed to disk: {exc}")


class LedgerWriter:
    """The journal appends and store copies of one run, and the waits that order them."""

    def __init__(
        self,
        ledger: Ledger,
        pools: RunPools,
        *,
        retry: StorageRetry,
        on_retry: Callable[[BaseException], None],
        on_no_space: Callable[[NoSpaceLeft], None],
        no_space: Callable[[], NoSpaceLeft | None],
        channel: SubmitChannel | None = None,
    ) -> None:
        self.ledger = ledger
        #: The run's submitting process, which appends to this run's journal too.
        self.channel = channel
        self.pools = pools
        self.retry = retry
        self.on_retry = on_retry
        self.on_no_space = on_no_space
        self._no_space = no_space
        self.replicas: dict[str, list[asyncio.Task[None]]] = {}
        self._sync_due = False

    async def write(self, write: Callable[..., None], *args: Any) -> None:
        """One blocking ledger write in the ledger's pool, outages waited out."""
        try:
            await retry_storage(
                lambda: self.pools.run(self.pools.ledger, write, *args),
                policy=self.retry,
                on_retry=self.on_retry,
            )
        except NoSpaceLeft as full:
            self.on_no_space(full)
            raise

    def journal(self, request: GenerationRequest, attempt_id: str, event: str, **data: Any) -> None:
        """Make ``event`` durable now (one local append, no thread, so the crash window is
        the network round trip) and copy it to the store in the background."""
        body = self.ledger.journal_event(request, attempt_id, event, **data)
        self.replicate_later(attempt_id, body)

    def replicate_later(self, attempt_id: str, body: LedgerEvent) -> None:
        """(On the event loop's thread.) An append that found the disk full stops the run;
        once it has, a local root's journal alone keeps events (they share the full disk,
        whose space the reserve keeps for answers): the next run copies them."""
        journal = self.ledger.journal
        if journal is not None and journal.full is not None:
            self.on_no_space(journal.full)
        if self._no_space() is not None and isinstance(self.ledger.store, LocalStore):
            return
        if self.ledger.deferred is not None:
            self.ledger.defer(body)  # copied at the end if its row is left open
            self._sync_soon()
            return
        replica = asyncio.ensure_future(self.write(self.ledger.replicate, body))
        self.replicas.setdefault(attempt_id, []).append(replica)

    def _sync_soon(self) -> None:
        """Journal events that are not copied to the store reach the disk within
        :data:`JOURNAL_SYNC_S` (one ``fdatasync`` for all of them), as the copies did."""
        if self._sync_due or self.ledger.journal is None:
            return
        self._sync_due = True
        journal = self.ledger.journal

        def sync() -> None:
            self._sync_due = False
            with contextlib.suppress(RuntimeError):  # the run's pools are shut: it ended
                self.pools.ledger.submit(_sync_quietly, journal)

        asyncio.get_running_loop().call_later(JOURNAL_SYNC_S, sync)

    def journal_from_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        request: GenerationRequest,
        attempt_id: str,
        event: str,
        **data: Any,
    ) -> None:
        """:meth:`journal` for a submit thread: the append happens here and now, the copy is
        handed to the event loop (which schedules it before the submitting task resumes,
        since the thread's answer is queued behind it)."""
        body = self.ledger.journal_event(request, attempt_id, event, **data)
        loop.call_soon_threadsafe(self.replicate_later, attempt_id, body)

    def submit_lines(
        self,
        request: GenerationRequest,
        attempt_id: str,
        *,
        intent: dict[str, Any] | None = None,
        on_intent: Callable[[], None] | None = None,
    ) -> SubmitLines | None:
        """The journal lines a submitting process writes around this attempt's POST: the
        intent (its ``intent`` data; None when resuming a recorded id) and the id. Each
        comes back here once durable, to be copied to the store like any journal event."""
        ledger, journal = self.ledger, self.ledger.journal
        if journal is None:
            return None

        def written(line: JournalLine) -> None:
            if line["event"] == "intent" and on_intent is not None:
                on_intent()
            self.replicate_later(attempt_id, line)

        return SubmitLines(
            journal.submits_path,
            None if intent is None else ledger.event_body(request, attempt_id, "intent", **intent),
            ledger.event_body(request, attempt_id, "submitted"),
            written,
        )

    def on_submitted(self, request: GenerationRequest, attempt_id: str) -> Callable[[str], None]:
        """The generation id's journal entry, written on the submitting thread."""
        loop = asyncio.get_running_loop()

        def record(generation_id: str) -> None:
            self.journal_from_thread(
                loop, request, attempt_id, "submitted", generation_id=generation_id
            )

        return record

    async def replicated(self, attempt_id: str) -> None:
        """Wait until this attempt's journaled events are in the store's ledger (or in the
        journal only, when the store's disk is full: the next run copies them)."""
        if pending := self.replicas.pop(attempt_id, None):
            for outcome in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, NoSpaceLeft):
                    raise outcome

    async def all_replicated(
        self,
        timeout_s: float | None = None,
        *,
        concluded: Iterable[tuple[int, str]] | None = None,
    ) -> None:
        """Wait for the store's copies of the journal; once all are written, the journals
        go. Copies still missing after ``timeout_s`` (a forced stop) leave the journal in
        place: the next run on this machine copies them.

        Deferred events (a local root) are copied now, except those of the ``concluded``
        rows (every record written). Without ``concluded`` (a run cut short, whose rows
        may be half recorded) nothing is copied and the journal stays, as after a kill.
        So it does while the submitting process may still append to it (a POST whose row
        was cut is answered later): it holds the journal, and the next run waits for it.
        """
        answered = self.channel is None or await self.channel.drained(timeout_s or ANSWER_WAIT_S)
        if self.ledger.deferred is not None:
            if concluded is None:
                return
            if self._no_space() is None:
                for body in self.ledger.take_deferred(concluded):
                    self.replicas.setdefault(str(body["attempt_id"]), []).append(
                        asyncio.ensure_future(self.write(self.ledger.replicate, body))
                    )
        pending = [task for tasks in self.replicas.values() for task in tasks]
        self.replicas.clear()
        if pending:
            done, late = await asyncio.wait(pending, timeout=timeout_s)
            if late or any(task.exception() is not None for task in done):
                return
        if self._no_space() is not None or not answered:
            return  # some events are in the journal only: it stays for the next run
        # Every event of this run's journal (and of those loaded) is in the store.
        await asyncio.to_thread(self.ledger.finish_journal)

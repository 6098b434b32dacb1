"""The run of one batch, row by row: send, keep every image, record, and end cleanly.

See :mod:`~ideogram_pipeline.runs.engine` for the shape of a run; this is its state and
its steps. Each image is downloaded in the same task that generated it, straight away,
because Ideogram's links expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.history.duplicates import link_records
from ideogram_pipeline.history.row_keys import row_keys
from ideogram_pipeline.history.schema import RowState
from ideogram_pipeline.history.tables import HistoryTables, import_writers
from ideogram_pipeline.ideogram.client import LAST_RETRY_ERROR, IdeogramClient
from ideogram_pipeline.ideogram.errors import (
    IdeogramError,
    ImageUnreadable,
    ResponseLost,
    SafetyRejected,
    TransportError,
)
from ideogram_pipeline.ideogram.generation import (
    V2_ONLY_MODELS,
    GeneratedImage,
    GenerationRequest,
    GenerationResponse,
    RejectedRow,
)
from ideogram_pipeline.ideogram.operations import operation
from ideogram_pipeline.ideogram.prices import request_price
from ideogram_pipeline.ideogram.requests import fits_v2
from ideogram_pipeline.ideogram.stop import SendsStopped
from ideogram_pipeline.images.contact_sheets import SheetTiles
from ideogram_pipeline.runs.bookkeeping import LedgerWriter
from ideogram_pipeline.runs.journal import Journal, journal_directory
from ideogram_pipeline.runs.ledger import Ledger, LedgerEntry, new_attempt_id
from ideogram_pipeline.runs.out_of_space import BatchOutOfSpace
from ideogram_pipeline.runs.pools import RunPools
from ideogram_pipeline.runs.recorder import Recorder
from ideogram_pipeline.runs.records import ExtraFields, RecordMaker, already_done
from ideogram_pipeline.runs.repeats import Repeats
from ideogram_pipeline.runs.retrying import STORAGE_RETRY, StorageRetry
from ideogram_pipeline.runs.run_endings import interrupted, out_of_space, total_outage
from ideogram_pipeline.runs.stopping import BatchInterrupted, StopState, stop_on_signals
from ideogram_pipeline.runs.storing import ImageKeeper
from ideogram_pipeline.runs.summary import (
    BatchAborted,
    BatchSummary,
    Progress,
    ProgressCallback,
)
from ideogram_pipeline.runs.will_send import ledger_is_open
from ideogram_pipeline.storage import LocalStore, NoSpaceLeft, ObjectStore

__all__ = ["BatchRun"]

logger = logging.getLogger(__name__)


def operation_makes_images(request: GenerationRequest) -> bool:
    """Whether the answer to ``request`` is images (everything but ``describe``)."""
    return not request.is_operation or operation(request.operation).makes_images


class BatchRun:
    """State of one run of a batch; :func:`~ideogram_pipeline.runs.engine.run_batch` is how
    the rest of the package runs one."""

    def __init__(
        self,
        batch: Batch,
        client: IdeogramClient,
        store: ObjectStore,
        *,
        run_id: str,
        simulated: bool,
        previous: Mapping[int, RowState],
        progress: ProgressCallback | None,
        flush_every: int,
        history: HistoryTables,
        existing: Mapping[str, list[dict[str, Any]]],
        extra_fields: ExtraFields | None = None,
        api_mode: str = "async",
        resend_unknown: bool = False,
        storage_retry: StorageRetry = STORAGE_RETRY,
        tiles: SheetTiles | None = None,
    ) -> None:
        self.batch = batch
        self.client = client
        # Intents and generation ids go to a local journal first, on the sending task's own
        # path, and reach the store's ledger in the background (journal.py).
        # Rows are known by their content (history/row_keys.py): records and ledger events
        # carry the row's key, so a row that moves to another line keeps both.
        keys = row_keys(batch.rows)
        # On a local root the journal lies in the root itself, so it is the ledger while
        # the run lasts: only the events of rows the run leaves open are copied at its end.
        self.ledger = Ledger(
            store,
            batch.key,
            Journal(journal_directory(store), batch.key),
            row_keys=keys,
            defer_replicas=isinstance(store, LocalStore),
        )
        self.ledger_state: dict[tuple[int, str], LedgerEntry] = {}
        self.api_mode = api_mode
        self.resend_unknown = resend_unknown
        self.previous = previous
        # Request hash -> the images an identical earlier request stored: linked, not sent.
        self.existing = existing
        self.progress = progress
        self.storage_retry = storage_retry
        self.summary = BatchSummary(
            batch=batch.key,
            run_id=run_id,
            rows=len(batch.rows),
            storage_root=store.root,
            simulated=simulated,
        )
        self.records = RecordMaker(
            batch_key=batch.key,
            source=batch.source,
            run_id=run_id,
            simulated=simulated,
            run_attempt=new_attempt_id(),
            extra_fields=extra_fields or {},
            row_keys=keys,
        )
        self.repeats = Repeats()  # identical seeded rows of this file: paid once
        self.pools = RunPools(client.limiter.max_images)
        self.recorder = Recorder(
            batch.key,
            summary=self.summary,
            history=history,
            ledger=self.ledger,
            previous=previous,
            pools=self.pools,
            flush_every=flush_every,
            on_no_space=self._out_of_space,
        )
        self.keeper = ImageKeeper(
            client,
            store,
            self.pools,
            batch_key=batch.key,
            on_retry=self._image_store_retried,
            retry=storage_retry,
            on_no_space=self._out_of_space,
            tiles=tiles,
            # The public base fronts the storage root, so it travels with the root's settings.
            public_base_url=history.settings.public_base_url,
        )
        self.book = LedgerWriter(
            self.ledger,
            self.pools,
            retry=storage_retry,
            on_retry=self._storage_retried,
            on_no_space=self._out_of_space,
            no_space=lambda: self.no_space,
            channel=client.channel,
        )
        self.done_rows = 0
        # Attempts whose intent is in the ledger: withdrawn if the run stops before sending.
        self.intents_written: set[str] = set()
        self.rows_sent = 0  # rows that reached the API (or tried to)
        #: Rows whose every step ended (not cut by a stop): with their records written,
        #: their ledger events may go even when the run is cut short.
        self.rows_ended: set[tuple[int, str]] = set()
        self.transport_failures = 0  # of those, rows failed on transport after retries
        self.last_transport_error = ""
        #: The first full disk the run met (out_of_space.py): it stops the run.
        self.no_space: NoSpaceLeft | None = None

    def close(self) -> None:
        self.pools.close()

    def _storage_retried(self, _exc: BaseException) -> None:
        self.summary.retries.update(["StorageError"])

    def _image_store_retried(self, exc: BaseException) -> None:
        LAST_RETRY_ERROR.set(f"{type(exc).__name__}: {exc}")
        self._storage_retried(exc)

    def row_done(self) -> None:
        self.done_rows += 1
        if self.progress is not None:
            self.progress(Progress(self.done_rows, self.summary.rows, self.summary))

    # -- rows ----------------------------------------------------------------------------

    async def reject(self, row: RejectedRow) -> None:
        await self.recorder.add(self.records.record(row, "rejected", error=row.error))
        self.row_done()

    async def link(self, row: GenerationRequest, originals: list[dict[str, Any]]) -> None:
        """Record ``row`` as the images an identical earlier request stored (not sent)."""
        bases = [self.records.record(row, "stored", i) for i in range(len(originals))]
        with self.recorder.working(row):
            for record in link_records(bases, originals):
                await self.recorder.add(record)
        self.summary.linked += 1
        self.row_done()

    def _mode(self, request: GenerationRequest) -> str:
        """Asynchronous (v2) wherever the model has a v2 path and the mode allows it."""
        if request.is_operation:  # only remove-background documents a v2 path
            has_v2 = operation(request.operation).v2_path is not None
            return "async" if self.api_mode == "async" and has_v2 else "sync"
        if request.model in V2_ONLY_MODELS:
            return "async" if self.api_mode == "async" else "sync-v2"
        if self.api_mode == "async" and fits_v2(request):
            # V_3 -> ideogram-3 (style references too, as multipart), a character reference
            # -> ideogram-3-character, V_2 -> ideogram-2, V_2A -> ideogram-2a.
            return "async"
        return "sync"

    def _attempt_state(self, request: GenerationRequest) -> tuple[LedgerEntry | None, set[int]]:
        """The newest ledger attempt for this row and the image indexes already recorded
        for it; a concluded attempt (its records all written) yields ``(None, set())``.
        The estimate reads the ledger by the same rule (``will_send.ledger_is_open``)."""
        entry = self.ledger_state.get((request.row, request.request_hash()))
        before = self.previous.get(request.row)
        if entry is None or not ledger_is_open(entry, before):
            return None, set()
        if before is None or before.attempt_id != entry.attempt_id:
            return entry, set()
        return entry, set(before.indexes)  # crashed between storing images and recording

    async def generate(self, request: GenerationRequest) -> None:
        started = time.monotonic()
        LAST_RETRY_ERROR.set(None)
        entry, recorded = self._attempt_state(request)
        attempt_id = entry.attempt_id if entry else new_attempt_id()
        if self.client.stop.thrown:
            return  # the run is stopping: this row is left for the next run
        self.rows_sent += 1
        try:
            if entry is not None and entry.response is not None:
                response = entry.response  # answered before a crash: download, don't pay
                self.summary.resumed += 1
            elif entry is not None and entry.generation_id is not None:
                response = await self.client.generate_async(
                    request,
                    self.book.on_submitted(request, attempt_id),
                    resume_generation_id=entry.generation_id,
                    lines=self.book.submit_lines(request, attempt_id),
                )
                await self._record_result(request, attempt_id, response)
                self.summary.resumed += 1
            elif entry is not None and not self.resend_unknown:
                await self._unknown(request, entry)
                return
            else:
                if entry is not None:
                    attempt_id = new_attempt_id()  # the user chose to resend an unknown row
                response = await self._send(request, attempt_id)
        except SendsStopped as exc:
            await self._stopped(request, attempt_id, exc)
            return
        except NoSpaceLeft as full:
            # The journal had no room for this row's intent: its request was not sent, and
            # the row is left for the next run (out_of_space.py).
            self._out_of_space(full)
            return
        except ResponseLost as exc:
            await self._unknown(
                request, LedgerEntry(request.row, request.request_hash(), attempt_id, "", ""), exc
            )
            return
        except IdeogramError as exc:
            if exc.fatal:
                raise
            await self._generation_failed(request, attempt_id, exc)
            return
        latency_ms = (time.monotonic() - started) * 1000
        if not operation_makes_images(request):
            await self._described(request, attempt_id, response, latency_ms)
            self.row_done()
            return
        await asyncio.gather(
            *(
                self._keep_image(request, index, image, response, attempt_id, latency_ms)
                for index, image in enumerate(response.images)
                if index not in recorded
            )
        )
        self.row_done()

    async def _send(self, request: GenerationRequest, attempt_id: str) -> GenerationResponse:
        """A new request: its intent in the ledger before it leaves, its answer right after."""
        mode = self._mode(request)

        if mode == "async":
            loop = asyncio.get_running_loop()

            def intent_now() -> None:  # on the submitting thread, right before the POST
                self.intents_written.add(attempt_id)
                self.book.journal_from_thread(loop, request, attempt_id, "intent", mode=mode)

            # The submitting process writes both lines when there is one (its own journal
            # file); the callbacks write them from a thread of this process otherwise.
            lines = self.book.submit_lines(
                request,
                attempt_id,
                intent={"mode": mode},
                on_intent=lambda: self.intents_written.add(attempt_id),
            )
            response = await self.client.generate_async(
                request,
                self.book.on_submitted(request, attempt_id),
                on_intent=intent_now,
                lines=lines,
            )
        else:

            async def intent() -> None:
                self.intents_written.add(attempt_id)
                self.book.journal(request, attempt_id, "intent", mode=mode)

            response = await self.client.generate(request, before_send=intent)
        await self._record_result(request, attempt_id, response)
        return response

    async def _record_result(
        self, request: GenerationRequest, attempt_id: str, response: GenerationResponse
    ) -> None:
        """The answer in the store's ledger before any download, and in the journal too,
        so a full disk cannot lose what was paid for (the journal's reserve takes it)."""
        await self.book.replicated(attempt_id)  # the result never lands before its intent
        self.book.journal(request, attempt_id, "result", **Ledger.result_data(response))
        await self.book.replicated(attempt_id)

    async def _stopped(
        self, request: GenerationRequest, attempt_id: str, exc: SendsStopped
    ) -> None:
        """The run stopped before this row's request left, or while its generation ran.

        A submitted generation keeps its ledger entries: the next run polls its id. An
        intent whose request never left is withdrawn, so the next run sends the row
        instead of calling it ``unknown``.
        """
        if exc.generation_id is not None:
            self.summary.left_submitted += 1
        elif attempt_id in self.intents_written:
            await self.book.replicated(attempt_id)  # the deletion must come after the write
            with contextlib.suppress(NoSpaceLeft):  # journal full, reserve spent: unknown
                await self.book.write(self.ledger.withdraw_intent, request, attempt_id)

    async def _generation_failed(
        self, request: GenerationRequest, attempt_id: str, exc: IdeogramError
    ) -> None:
        safety = isinstance(exc, SafetyRejected)
        if isinstance(exc, TransportError):
            self.transport_failures += 1
            self.last_transport_error = str(exc)
        unreadable = isinstance(exc, ImageUnreadable)
        if safety:
            reason = "prompt failed Ideogram's safety check (HTTP 422, not billed)"
        elif unreadable:  # its message names the row already
            reason = str(exc).removeprefix(f"row {request.row}: ")
        else:
            reason = f"generation failed after {exc.attempts} attempt(s): {exc}"
        kind = "safety" if safety else "source" if unreadable else "generation"
        record = self.records.record(
            request,
            "failed",
            0,
            attempt_id,
            error=f"row {request.row}: {reason}",
            attempts=exc.attempts,
            failure_kind=kind,
            last_error=LAST_RETRY_ERROR.get(),
        )
        await self.recorder.add(record)
        self.row_done()

    async def _unknown(
        self, request: GenerationRequest, entry: LedgerEntry, lost: ResponseLost | None = None
    ) -> None:
        before = self.previous.get(request.row)
        if before is None or before.attempt_id != entry.attempt_id:  # not yet recorded
            what = (
                str(lost)
                if lost is not None
                else f"a request was sent at {entry.intent_at} but no answer was recorded "
                "(the run stopped); it may have been billed"
            )
            record = self.records.record(
                request,
                "unknown",
                0,
                entry.attempt_id,
                failure_kind="answer_lost",
                error=f"row {request.row}: {what}. Re-run with --resend-unknown to send it again.",
            )
            await self.recorder.add(record)
        else:
            self.summary.unknown += 1
        self.row_done()

    async def _keep_image(
        self,
        request: GenerationRequest,
        index: int,
        image: GeneratedImage,
        response: GenerationResponse,
        attempt_id: str,
        latency_ms: float,
    ) -> None:
        safe_url = image.url if image.is_image_safe else None
        record = self.records.record(
            request,
            "stored" if safe_url is not None else "unsafe",
            index,
            attempt_id,
            generation_id=response.generation_id,
            expanded_prompt=image.prompt,
            seed=image.seed,
            resolution=image.resolution or request.resolution,
            style_type=image.style_type or request.style_type,
            is_safe=image.is_image_safe,
            original_url=image.url,
            # Billed once generated, even if unsafe or lost later.
            cost_usd=request_price(request),
            attempts=response.attempts,
            latency_ms=latency_ms,
        )
        if safe_url is None:
            record = replace(record, error="Ideogram withheld the image as unsafe (billed)")
        else:
            record = await self.keeper.keep(record, safe_url)
        self.repeats.seen(record)
        await self.recorder.add(record)

    async def _described(
        self,
        request: GenerationRequest,
        attempt_id: str,
        response: GenerationResponse,
        latency_ms: float,
    ) -> None:
        """``describe`` answers with text: its record keeps the text and the fee (billed per
        input); the source record gets the text as its ``description`` once this run's
        records are written (:meth:`_describe_sources`)."""
        text = "\n".join(line for line in response.descriptions if line)
        record = self.records.record(
            request,
            "stored",
            0,
            attempt_id,
            generation_id=response.generation_id,
            description=text,
            cost_usd=request_price(request),
            attempts=response.attempts,
            latency_ms=latency_ms,
        )
        await self.recorder.add(record)

    async def _describe_sources(self) -> None:
        """Copy each describe record's text onto its source record (in place, in
        ``generations``), from the history: what a killed run left undone is done too."""
        if not any(row.operation == "describe" for row in self.batch.requests):
            return
        from ideogram_pipeline.history.descriptions import sync_descriptions

        try:
            await asyncio.to_thread(sync_descriptions, self.recorder.history, self.batch.key)
        except Exception as exc:  # the paid work is recorded; the next run copies the text
            logger.warning(f"batch {self.batch.key}: descriptions not copied yet: {exc}")

    # -- the run -------------------------------------------------------------------------

    async def run(self, workers: int) -> BatchSummary:
        # The history writers' imports, while the first requests wait (tables.py).
        threading.Thread(target=import_writers, name="import-writers", daemon=True).start()
        try:  # copying a killed run's journal to the ledger needs space too
            self.ledger_state = await asyncio.to_thread(self.ledger.load)
        except NoSpaceLeft as full:
            raise self._out_of_space_error(full, time.monotonic()) from None
        clock = time.monotonic()
        self.client.on_retry = lambda exc, _attempt: self.summary.retries.update(
            [type(exc).__name__]
        )
        # A bounded queue between one producer and a fixed set of workers, rather than a
        # task per row: 10,000 rows would otherwise mean 10,000 coroutines waiting on the
        # limiter, each woken on every slot release. Rows still leave in CSV order.
        queue: asyncio.Queue[GenerationRequest | None] = asyncio.Queue(maxsize=workers)

        async def produce() -> None:
            for row in self.batch.rows:
                if self.client.stop.thrown:
                    break  # stopping: the rows not reached are left for the next run
                if (request := await self._to_send(row)) is not None:
                    await queue.put(request)
            for _ in range(workers):
                await queue.put(None)

        async def work() -> None:
            while (row := await queue.get()) is not None:
                with self.recorder.working(row):
                    await self.generate(row)
                self.rows_ended.add((row.row, row.request_hash()))

        tasks = [asyncio.create_task(produce())]
        tasks += [asyncio.create_task(work()) for _ in range(workers)]

        def cut() -> None:
            for task in tasks:
                task.cancel()

        with stop_on_signals(self.client.stop, cut) as signals:
            try:
                await asyncio.gather(*tasks)
                await self._finish_repeats()
            except BaseException as exc:
                cut()
                await asyncio.gather(*tasks, return_exceptions=True)
                # A row cut mid-way may be half recorded (one image of four): its ledger
                # entries stay, so the next run finishes it from them without paying.
                self.recorder.keep_entries(self.recorder.concluded - self.rows_ended)
                if signals.forced and isinstance(exc, asyncio.CancelledError):
                    await self.recorder.flush()
                    await self.book.all_replicated(
                        timeout_s=2.0, concluded=self.recorder.finished_rows()
                    )
                    raise self._stopped_run(signals, clock) from None
                if not isinstance(exc, IdeogramError):
                    raise
                await self.recorder.flush()
                await self.book.all_replicated(concluded=self.recorder.finished_rows())
                await self._describe_sources()
                self.summary.seconds = time.monotonic() - clock
                raise BatchAborted(f"batch {self.batch.key} stopped: {exc}", self.summary) from exc
            await self.recorder.flush()
            # Every row has ended: those with all records written need no ledger entries.
            await self.book.all_replicated(concluded=self.recorder.finished_rows())
            await self._describe_sources()
            if self.no_space is not None:  # records may be unwritten: the ledger stays whole
                raise self._out_of_space_error(self.no_space, clock)
            await asyncio.to_thread(self.ledger.prune, self.recorder.finished_rows())
            if self.client.stop.thrown:
                raise self._stopped_run(signals, clock)
        self.summary.seconds = time.monotonic() - clock
        if outage := total_outage(
            self.batch.key,
            self.summary,
            base_url=self.client.base_url,
            rows_sent=self.rows_sent,
            transport_failures=self.transport_failures,
            last_error=self.last_transport_error,
        ):
            raise outage
        return self.summary

    async def _finish_repeats(self) -> None:
        """Link each repeat to the images its first row stored, or send it when there are
        none (``repeats.py``); a stopping run leaves them for the next run."""
        for row in self.repeats.take():
            if self.client.stop.thrown:
                return
            if (originals := self.repeats.originals(row)) is not None:
                await self.link(row, originals)
                continue
            with self.recorder.working(row):
                await self.generate(row)
            self.rows_ended.add((row.row, row.request_hash()))

    def _out_of_space(self, full: NoSpaceLeft) -> None:
        """A full disk stops the run as a clean stop does: no new request leaves, requests
        already sent are answered and journaled, and no more images are tried."""
        if self.no_space is None:
            self.no_space = full
            self.keeper.full = self.keeper.full or full
            self.client.stop.throw(str(full))

    def _out_of_space_error(self, full: NoSpaceLeft, clock: float) -> BatchOutOfSpace:
        kept = len(self.recorder.left_to_ledger) + self.summary.left_submitted
        return out_of_space(
            self.batch.key, full, self.summary, done_rows=self.done_rows, kept=kept, clock=clock
        )

    def _stopped_run(self, signals: StopState, clock: float) -> BatchInterrupted:
        return interrupted(
            self.batch.key,
            self.summary,
            done_rows=self.done_rows,
            signals=signals,
            reason=self.client.stop.reason,
            clock=clock,
        )

    async def _to_send(self, row: GenerationRequest | RejectedRow) -> GenerationRequest | None:
        """``row`` if it must be sent; None once settled without a request: done by an
        earlier run, rejected, too large for the account (rejected), or identical to a
        stored request (linked)."""
        if already_done(row, self.previous):
            if isinstance(row, RejectedRow):
                self.summary.rejected += 1
            else:
                self.summary.skipped += 1
                self.recorder.concluded.add((row.row, row.request_hash()))
            self.row_done()
        elif isinstance(row, RejectedRow):
            await self.reject(row)
        elif row.num_images > (limit := self.client.limiter.max_images):
            # Ideogram answers 429 forever to a request larger than the account's limit.
            reason = (
                f"{row.num_images} exceeds the account's in-flight limit "
                f"(IDEOGRAM_MAX_INFLIGHT={limit})"
            )
            await self.reject(RejectedRow(row.row, "num_images", reason, row.prompt, row.tags))
        elif originals := self.existing.get(row.request_hash()):
            await self.link(row, originals)
        elif self.repeats.defer(row):
            pass  # waits for the identical row before it (_finish_repeats)
        else:
            return row
        return None

"""One batch, end to end: generate -> download -> verify -> store -> record.

Each image is downloaded in the same task that generated it, straight away, because
Ideogram's links expire. Concurrency is plain asyncio inside one process, bounded by the
client's in-flight limiter (images, as Ideogram counts them); blocking storage calls run in
threads so they never stall the event loop.

Every CSV row ends with at least one record: ``stored``, ``unsafe``, ``rejected`` or
``failed``. A row already ``stored`` or ``unsafe`` for the same request is never sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.history.duplicates import link_records
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.ideogram.client import LAST_RETRY_ERROR, IdeogramClient
from ideogram_pipeline.ideogram.errors import (
    IdeogramError,
    LinkExpired,
    ResponseLost,
    SafetyRejected,
)
from ideogram_pipeline.ideogram.prices import price_per_image
from ideogram_pipeline.ideogram.records import (
    V2_ONLY_MODELS,
    GeneratedImage,
    GenerationRequest,
    GenerationResponse,
    RejectedRow,
)
from ideogram_pipeline.ideogram.requests import V2_MODEL_PATHS
from ideogram_pipeline.images.png_metadata import prepare_for_storage
from ideogram_pipeline.runs.ledger import Ledger, LedgerEntry, attempt_day, new_attempt_id
from ideogram_pipeline.runs.malloc_tuning import pin_mmap_threshold, use_system_allocator_for_arrow
from ideogram_pipeline.storage import ObjectStore, StorageError
from ideogram_pipeline.storage.keys import image_key

__all__ = ["BatchAborted", "BatchSummary", "Progress", "already_done", "run_batch"]

IMAGE_CACHE_CONTROL = "public, max-age=31536000, immutable"
#: Threads for ledger writes and for uploads (each pool): together within boto3's default
#: connection pool of 32 (storage/s3.py), so no request waits for, or churns, a connection.
MAX_IO_THREADS = 16
#: Storage retries (on top of boto3's own): about a minute of outage is waited out.
STORE_ATTEMPTS = 8
STORE_RETRY_FIRST_DELAY_S = 0.5
STORE_RETRY_MAX_DELAY_S = 15.0


class StorageUnavailable(Exception):
    """The store kept failing for an image we paid for and downloaded."""


class BatchAborted(Exception):
    """The whole batch had to stop (bad key, no credits); finished rows are kept."""

    def __init__(self, message: str, summary: BatchSummary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class BatchSummary:
    """What a run did, in the terms a person asks about afterwards."""

    batch: str
    run_id: str
    rows: int = 0
    stored: int = 0
    unsafe: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0  # rows already stored/unsafe from an earlier run: not sent, not paid
    unknown: int = 0  # sent before a crash with no answer recorded: possibly billed
    resumed: int = 0  # answered before a crash and finished now without a new request
    linked: int = 0  # rows whose exact request was stored before: linked, not sent (issue 6)
    cost_usd: float = 0.0
    seconds: float = 0.0
    retries: Counter[str] = field(default_factory=Counter)
    #: Versions of ``generations`` this run's metadata flushes committed.
    history_commits: list[int] = field(default_factory=list)
    storage_root: str = ""
    simulated: bool = False
    first_records: list[dict[str, Any]] = field(default_factory=list)
    estimated_cost_usd: float | None = None  # what the cost guard priced before sending
    dry_run: bool = False  # estimate only: nothing was sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "run_id": self.run_id,
            "rows": self.rows,
            "stored": self.stored,
            "unsafe": self.unsafe,
            "rejected": self.rejected,
            "failed": self.failed,
            "skipped": self.skipped,
            "unknown": self.unknown,
            "resumed": self.resumed,
            "linked": self.linked,
            "cost_usd": round(self.cost_usd, 4),
            "seconds": round(self.seconds, 2),
            "retries": dict(self.retries),
            "storage_root": self.storage_root,
            "simulated": self.simulated,
            "estimated_cost_usd": self.estimated_cost_usd,
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True)
class Progress:
    done_rows: int
    total_rows: int
    summary: BatchSummary


ProgressCallback = Callable[[Progress], None]


def _now() -> datetime:
    return datetime.now(UTC)


class _BatchRun:
    """State of one run; kept private so :func:`run_batch` is the whole public surface."""

    def __init__(
        self,
        batch: Batch,
        client: IdeogramClient,
        store: ObjectStore,
        *,
        run_id: str,
        simulated: bool,
        previous: dict[int, dict[str, Any]],
        progress: ProgressCallback | None,
        flush_every: int,
        extra_fields: Mapping[tuple[int, int], Mapping[str, Any]] | None = None,
        ledger: Ledger | None = None,
        api_mode: str = "async",
        resend_unknown: bool = False,
        history: HistoryTables | None = None,
    ) -> None:
        self.batch = batch
        self.ledger = ledger or Ledger(store, batch.key)
        self.ledger_state: dict[tuple[int, str], LedgerEntry] = {}
        self.api_mode = api_mode
        self.resend_unknown = resend_unknown
        # Records that belong to no request attempt (rejections, links) share this one.
        self.run_attempt = new_attempt_id()
        self.concluded: set[tuple[int, str]] = set()  # rows whose ledger entries can go
        self.unfinished: set[tuple[int, str]] = set()
        self.in_progress: set[tuple[int, str]] = set()  # rows still adding records
        self.client = client
        self.store = store
        self.previous = previous
        self.progress = progress
        self.flush_every = flush_every
        self.extra_fields = extra_fields or {}
        self.started = _now()
        self.history = history or HistoryTables.for_store(store)
        self.summary = BatchSummary(
            batch=batch.key,
            run_id=run_id,
            rows=len(batch.rows),
            storage_root=store.root,
            simulated=simulated,
        )
        self.pending: list[dict[str, Any]] = []
        self.done_rows = 0
        self.flush_lock = asyncio.Lock()
        # Downloads start as soon as a generation returns; this only bounds memory.
        self.download_slots = asyncio.Semaphore(max(client.limiter.max_images * 2, 4))
        # Blocking work runs in pools of this run's own, not the loop's default executor
        # (min(32, cpus + 4) threads shared by everything): a ledger intent, written while
        # its request holds in-flight slots, must never queue behind image hashing or
        # uploads. Hashing decodes whole images (Pillow releases the GIL while decoding),
        # so it gets one thread per core.
        limit = client.limiter.max_images
        self.ledger_pool = ThreadPoolExecutor(
            min(limit + 4, MAX_IO_THREADS), thread_name_prefix="ideogram-ledger"
        )
        self.io_pool = ThreadPoolExecutor(
            min(max(limit * 2, 4), MAX_IO_THREADS), thread_name_prefix="ideogram-io"
        )
        self.cpu_pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="ideogram-cpu")

    async def _in_thread(self, pool: Executor, fn: Callable[..., Any], *args: Any) -> Any:
        """``asyncio.to_thread`` on ``pool``: the call sees this task's context variables."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    def close(self) -> None:
        for pool in (self.ledger_pool, self.io_pool, self.cpu_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # -- records -------------------------------------------------------------------------

    def _base_record(
        self, row: GenerationRequest | RejectedRow, index: int = 0, attempt_id: str | None = None
    ) -> dict[str, Any]:
        created = _now()
        attempt_id = attempt_id or self.run_attempt
        # Ids (and so image keys) follow from the attempt: an attempt finished by a later run
        # after a crash writes the same ids and keys, never a duplicate or an orphan.
        identity = f"{self.batch.key}|{row.row}|{attempt_id}|{index}"
        record: dict[str, Any] = {
            "id": hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32],
            "attempt_id": attempt_id,
            "row": row.row,
            "image_index": index,
            "prompt": row.prompt,
            "tags": list(row.tags),
            "created_at": created,
            "date": created.date().isoformat(),
            "run_id": self.summary.run_id,
            "run_started_at": self.started,
            "cost_usd": 0.0,
            "attempts": 0,
            "batch_name": Path(self.batch.source).name,
            "source_file": self.batch.source,
            "simulated": self.summary.simulated,
        }
        record.update(self.extra_fields.get((row.row, index), {}))  # e.g. reproduced_from
        if isinstance(row, GenerationRequest):
            record.update(
                model=row.model,
                negative_prompt=row.negative_prompt,
                style_type=row.style_type,
                aspect_ratio=row.aspect_ratio,
                resolution=row.resolution,
                rendering_speed=row.rendering_speed,
                magic_prompt=row.magic_prompt,
                requested_seed=row.seed,
                seed=row.seed,
                num_images=row.num_images,
                request_hash=row.request_hash(),
            )
        return record

    async def _add(self, record: dict[str, Any]) -> None:
        status = record["status"]
        if record.get("request_hash"):
            row_key = (record["row"], record["request_hash"])
            if status == "unknown" or record.get("failure_kind") == "storage":
                self.unfinished.add(row_key)  # its ledger entry is still needed
            else:
                self.concluded.add(row_key)
        setattr(self.summary, status, getattr(self.summary, status) + 1)
        self.summary.cost_usd += record.get("cost_usd") or 0.0
        if len(self.summary.first_records) < 10:
            self.summary.first_records.append(record)
        self.pending.append(record)
        if len(self.pending) >= self.flush_every:
            await self.flush()

    async def flush(self) -> None:
        async with self.flush_lock:
            records, self.pending = self.pending, []
            # Rows with nothing left to record: every record of theirs is in `records` or in
            # a file already written, so once these are written their ledger entries can go.
            ready = self.concluded - self.unfinished - self.in_progress
            if records:
                # Rows recorded by an earlier run: their older images this run does not
                # replace are deleted in the same commit (a row re-run with fewer images).
                stale = sorted({r["row"] for r in records if r["row"] in self.previous})
                written = await self._in_thread(
                    self.io_pool,
                    functools.partial(self.history.write, stale_rows=stale),
                    self.batch.key,
                    records,
                )
                self.summary.history_commits.append(written.generations_version)
            if ready:
                # Pruned as the run goes, so a 10,000-row batch ends without deleting 30,000
                # entries at once; entries whose deletion fails are found by the next load.
                self.concluded -= ready
                with contextlib.suppress(StorageError):
                    await self._in_thread(self.io_pool, self.ledger.prune, ready)

    def _row_done(self) -> None:
        self.done_rows += 1
        if self.progress is not None:
            self.progress(Progress(self.done_rows, self.summary.rows, self.summary))

    # -- rows ----------------------------------------------------------------------------

    def _already_done(self, row: GenerationRequest | RejectedRow) -> bool:
        return already_done(row, self.previous)

    async def reject(self, row: RejectedRow) -> None:
        record = self._base_record(row)
        record.update(status="rejected", error=row.error)
        await self._add(record)
        self._row_done()

    def _mode(self, request: GenerationRequest) -> str:
        """Asynchronous (v2) wherever the model has a v2 path and the mode allows it."""
        if request.model in V2_ONLY_MODELS:
            return "async" if self.api_mode == "async" else "sync-v2"
        if request.model in V2_MODEL_PATHS and self.api_mode == "async":
            return "async"
        return "sync"

    async def _ledger(self, write: Callable[..., None], *args: Any) -> None:
        """Ledger writes wait out storage outages like image uploads do: without the
        record of an intent, nothing may be sent."""
        delay = STORE_RETRY_FIRST_DELAY_S
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                await self._in_thread(self.ledger_pool, write, *args)
                return
            except StorageError:
                if attempt == STORE_ATTEMPTS:
                    raise
                self.summary.retries.update(["StorageError"])
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_DELAY_S)

    def _on_submitted(
        self, request: GenerationRequest, attempt_id: str
    ) -> Callable[[str], Awaitable[None]]:
        async def record(generation_id: str) -> None:
            await self._ledger(self.ledger.record_submitted, request, attempt_id, generation_id)

        return record

    def _attempt_state(self, request: GenerationRequest) -> tuple[LedgerEntry | None, set[int]]:
        """The newest ledger attempt for this row and the image indexes already recorded
        for it; a concluded attempt (its records all written) yields ``(None, set())``."""
        entry = self.ledger_state.get((request.row, request.request_hash()))
        if entry is None:
            return None, set()
        before = self.previous.get(request.row) or {}
        if before.get("attempt_id") != entry.attempt_id:
            return entry, set()
        recorded = set(before.get("indexes") or ())
        expected = len(entry.response.images) if entry.response else 0
        if entry.response is not None and len(recorded) < expected:
            return entry, recorded  # crashed between storing images and recording them
        return None, set()

    async def generate(self, request: GenerationRequest) -> None:
        started = time.monotonic()
        LAST_RETRY_ERROR.set(None)
        entry, recorded = self._attempt_state(request)
        attempt_id = entry.attempt_id if entry else new_attempt_id()
        try:
            if entry is not None and entry.response is not None:
                response = entry.response  # answered before a crash: download, don't pay
                self.summary.resumed += 1
            elif entry is not None and entry.generation_id is not None:
                response = await self.client.generate_async(
                    request,
                    self._on_submitted(request, attempt_id),
                    resume_generation_id=entry.generation_id,
                )
                await self._ledger(self.ledger.record_result, request, attempt_id, response)
                self.summary.resumed += 1
            elif entry is not None and not self.resend_unknown:
                await self._unknown(request, entry)
                return
            else:
                if entry is not None:
                    attempt_id = new_attempt_id()  # the user chose to resend an unknown row
                mode = self._mode(request)

                async def intent() -> None:
                    await self._ledger(self.ledger.record_intent, request, attempt_id, mode)

                if mode == "async":
                    response = await self.client.generate_async(
                        request, self._on_submitted(request, attempt_id), before_send=intent
                    )
                else:
                    response = await self.client.generate(request, before_send=intent)
                await self._ledger(self.ledger.record_result, request, attempt_id, response)
        except ResponseLost as exc:
            await self._unknown(
                request, LedgerEntry(request.row, request.request_hash(), attempt_id, "", ""), exc
            )
            return
        except IdeogramError as exc:
            if exc.fatal:
                raise
            record = self._base_record(request, 0, attempt_id)
            reason = (
                "prompt failed Ideogram's safety check (HTTP 422, not billed)"
                if isinstance(exc, SafetyRejected)
                else f"generation failed after {exc.attempts} attempt(s): {exc}"
            )
            record.update(
                status="failed",
                error=f"row {request.row}: {reason}",
                attempts=exc.attempts,
                failure_kind="safety" if isinstance(exc, SafetyRejected) else "generation",
                last_error=LAST_RETRY_ERROR.get(),
            )
            await self._add(record)
            self._row_done()
            return
        latency_ms = (time.monotonic() - started) * 1000
        price = price_per_image(request.model, request.rendering_speed)
        await asyncio.gather(
            *(
                self._keep_image(request, index, image, price, response, attempt_id, latency_ms)
                for index, image in enumerate(response.images)
                if index not in recorded
            )
        )
        self._row_done()

    async def _unknown(
        self, request: GenerationRequest, entry: LedgerEntry, lost: ResponseLost | None = None
    ) -> None:
        before = self.previous.get(request.row) or {}
        if before.get("attempt_id") != entry.attempt_id:  # not yet recorded as unknown
            record = self._base_record(request, 0, entry.attempt_id)
            what = (
                str(lost)
                if lost is not None
                else f"a request was sent at {entry.intent_at} but no answer was recorded "
                "(the run stopped); it may have been billed"
            )
            record.update(
                status="unknown",
                failure_kind="answer_lost",
                error=f"row {request.row}: {what}. Re-run with --resend-unknown to send it again.",
            )
            await self._add(record)
        else:
            self.summary.unknown += 1
        self._row_done()

    async def _keep_image(
        self,
        request: GenerationRequest,
        index: int,
        image: GeneratedImage,
        price: float,
        response: GenerationResponse,
        attempt_id: str,
        latency_ms: float,
    ) -> None:
        attempts = response.attempts
        record = self._base_record(request, index, attempt_id)
        record["generation_id"] = response.generation_id
        record.update(
            image_index=index,
            expanded_prompt=image.prompt,
            seed=image.seed,
            resolution=image.resolution or request.resolution,
            style_type=image.style_type or request.style_type,
            is_safe=image.is_image_safe,
            original_url=image.url,
            cost_usd=price,  # billed once generated, even if unsafe or lost later
            attempts=attempts,
            latency_ms=latency_ms,
        )
        if not image.is_image_safe or image.url is None:
            record.update(status="unsafe", error="Ideogram withheld the image as unsafe (billed)")
            await self._add(record)
            return
        try:
            async with self.download_slots:
                data, download_attempts = await self.client.download(image.url)
                # Text chunks in, download sha256 and phash recorded (pngmeta.py, issue 6),
                # and the stored bytes' checksum: all off the event loop.
                data, digest = await self._in_thread(
                    self.cpu_pool, _prepare, data, record, self.batch.key
                )
                key = image_key(record["id"], attempt_day(attempt_id))
            await self._store_with_retries(key, data, digest, record, request)
        except LinkExpired as exc:
            record.update(
                status="failed",
                failure_kind="expired",
                error=f"row {request.row}: image link expired before download: {exc}",
            )
        except IdeogramError as exc:
            record.update(
                status="failed",
                failure_kind="download",
                error=f"row {request.row}: download failed after {exc.attempts} attempt(s): {exc}",
            )
        except StorageUnavailable as exc:  # paid and downloaded: the ledger keeps the URL
            record.update(
                status="failed",
                failure_kind="storage",
                error=f"row {request.row}: storing the image failed ({exc}); the next run "
                "stores it from the ledger without paying again while its link is valid",
            )
        else:
            record.update(
                status="stored",
                sha256=digest,
                size_bytes=len(data),
                image_key=key,
                stored_uri=self.store.uri(key),
                attempts=attempts + download_attempts - 1,
            )
        record["last_error"] = LAST_RETRY_ERROR.get()
        await self._add(record)

    async def _store_with_retries(
        self,
        key: str,
        data: bytes,
        digest: str,
        record: dict[str, Any],
        request: GenerationRequest,
    ) -> None:
        """Storage outages (an S3 endpoint restarting) are waited out with backoff: the
        image is paid for and in memory, so giving up early would waste it."""
        delay = STORE_RETRY_FIRST_DELAY_S
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                await self._in_thread(
                    self.io_pool, self._store_image, key, data, digest, record, request
                )
                return
            except Exception as exc:
                if attempt == STORE_ATTEMPTS:
                    raise StorageUnavailable(str(exc)) from exc
                LAST_RETRY_ERROR.set(f"{type(exc).__name__}: {exc}")
                self.summary.retries.update(["StorageError"])
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_DELAY_S)

    def _store_image(
        self, key: str, data: bytes, digest: str, record: dict[str, Any], request: GenerationRequest
    ) -> None:
        self.store.put_bytes(
            key,
            data,
            content_type="image/png",
            cache_control=IMAGE_CACHE_CONTROL,
            create_only=True,
            metadata={
                "record-id": record["id"],
                "seed": str(record["seed"]),
                "model": request.model,
                "batch": self.batch.key,
                "sha256": digest,
            },
        )
        info = self.store.head(key)
        if info is None or info.size != len(data):
            raise OSError(f"stored object {key} does not match the downloaded bytes")


def _prepare(data: bytes, record: dict[str, Any], batch: str) -> tuple[bytes, str]:
    """The bytes to store (see :func:`prepare_for_storage`) and their SHA-256."""
    stored = prepare_for_storage(data, record, batch)
    return stored, hashlib.sha256(stored).hexdigest()


def already_done(row: GenerationRequest | RejectedRow, previous: dict[int, dict[str, Any]]) -> bool:
    """Whether ``row`` needs no new work: the same request already ``stored`` or ``unsafe``
    (paid for), or the same rejection already recorded. The cost estimate uses it too."""
    before = previous.get(row.row)
    if before is None:
        return False
    if isinstance(row, RejectedRow):
        return before["statuses"] == {"rejected"} and before["error"] == row.error
    # Every image of the attempt must be recorded: a crash can record some of them only.
    return (
        before["request_hash"] == row.request_hash()
        and bool(before["statuses"] & {"stored", "unsafe"})
        and len(before.get("indexes") or (0,)) >= row.num_images
    )


async def run_batch(
    batch: Batch,
    client: IdeogramClient,
    store: ObjectStore,
    *,
    previous: dict[int, dict[str, Any]] | None = None,
    run_id: str | None = None,
    simulated: bool = False,
    progress: ProgressCallback | None = None,
    flush_every: int = 500,
    existing: Mapping[str, list[dict[str, Any]]] | None = None,
    extra_fields: Mapping[tuple[int, int], Mapping[str, Any]] | None = None,
    api_mode: str = "async",
    resend_unknown: bool = False,
    history: HistoryTables | None = None,
) -> BatchSummary:
    """Run every row of ``batch``; return the summary, or raise :class:`BatchAborted`.

    ``previous`` is the batch's recorded state (:func:`ideogram_pipeline.history.batch_state`)
    so that rows already paid for are skipped. ``existing`` maps request hashes to images
    already stored anywhere in the history
    (:func:`ideogram_pipeline.history.duplicates.existing_images`): such rows are linked,
    not sent. ``extra_fields`` adds columns to the records of
    ``(row, image_index)``, e.g. ``reproduced_from``.

    The batch's ledger (``ledger.py``) is read first: rows answered before a crash are
    finished without a new request, and rows sent without an answer end ``unknown`` unless
    ``resend_unknown``. ``api_mode`` ``async`` uses Ideogram's v2 asynchronous API where the
    model has it; ``sync`` keeps the v1 endpoints. ``history`` is where records go (by
    default the tables under a local ``store``'s root).
    """
    run = _BatchRun(
        batch,
        client,
        store,
        run_id=run_id or uuid.uuid4().hex[:12],
        simulated=simulated,
        previous=previous or {},
        progress=progress,
        flush_every=flush_every,
        extra_fields=extra_fields,
        api_mode=api_mode,
        resend_unknown=resend_unknown,
        history=history,
    )
    # Image buffers and Parquet flushes give their memory back: a long batch stays flat.
    pin_mmap_threshold()
    use_system_allocator_for_arrow()
    try:
        return await _run(run, batch, client, existing)
    finally:
        run.close()


def _worker_count(max_images: int) -> int:
    """Rows worked on at once: enough to keep every in-flight slot busy while as many
    finished rows download and store their images, and no more (memory stays flat)."""
    return 2 * max_images + 4


async def _run(
    run: _BatchRun,
    batch: Batch,
    client: IdeogramClient,
    existing: Mapping[str, list[dict[str, Any]]] | None,
) -> BatchSummary:
    run.ledger_state = await asyncio.to_thread(run.ledger.load)
    clock = time.monotonic()
    client.on_retry = lambda exc, _attempt: run.summary.retries.update([type(exc).__name__])
    workers = _worker_count(client.limiter.max_images)
    # A bounded queue between one producer and a fixed set of workers, rather than a task
    # per row: 10,000 rows would otherwise mean 10,000 coroutines waiting on the limiter,
    # each woken on every slot release. Rows still leave in CSV order.
    queue: asyncio.Queue[GenerationRequest | None] = asyncio.Queue(maxsize=workers)

    async def produce() -> None:
        for row in batch.rows:
            if run._already_done(row):
                if isinstance(row, RejectedRow):
                    run.summary.rejected += 1
                else:
                    run.summary.skipped += 1
                    run.concluded.add((row.row, row.request_hash()))
                run._row_done()
            elif isinstance(row, RejectedRow):
                await run.reject(row)
            elif row.num_images > client.limiter.max_images:
                # Ideogram answers 429 forever to a request larger than the account's limit.
                await run.reject(
                    RejectedRow(
                        row.row,
                        "num_images",
                        f"{row.num_images} exceeds the account's in-flight limit "
                        f"(IDEOGRAM_MAX_INFLIGHT={client.limiter.max_images})",
                        row.prompt,
                        row.tags,
                    )
                )
            elif existing and row.request_hash() in existing:
                originals = existing[row.request_hash()]
                run.in_progress.add((row.row, row.request_hash()))
                for record in link_records(
                    [run._base_record(row, i) for i in range(len(originals))], originals
                ):
                    await run._add(record)
                run.in_progress.discard((row.row, row.request_hash()))
                run.summary.linked += 1
                run._row_done()
            else:
                await queue.put(row)
        for _ in range(workers):
            await queue.put(None)

    async def work() -> None:
        while (row := await queue.get()) is not None:
            key = (row.row, row.request_hash())
            run.in_progress.add(key)
            try:
                await run.generate(row)
            finally:
                run.in_progress.discard(key)

    tasks = [asyncio.create_task(produce())]
    tasks += [asyncio.create_task(work()) for _ in range(workers)]
    try:
        await asyncio.gather(*tasks)
    except BaseException as exc:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not isinstance(exc, IdeogramError):
            raise
        await run.flush()
        run.summary.seconds = time.monotonic() - clock
        raise BatchAborted(f"batch {batch.key} stopped: {exc}", run.summary) from exc
    await run.flush()
    await asyncio.to_thread(run.ledger.prune, run.concluded - run.unfinished)
    run.summary.seconds = time.monotonic() - clock
    return run.summary

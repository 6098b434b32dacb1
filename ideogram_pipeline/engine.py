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
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ideogram_pipeline.batches import Batch
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.ideogram.errors import IdeogramError, LinkExpired, SafetyRejected
from ideogram_pipeline.keys import image_key
from ideogram_pipeline.models import GeneratedImage, GenerationRequest, RejectedRow
from ideogram_pipeline.pricing import price_per_image
from ideogram_pipeline.storage import ObjectStore
from ideogram_pipeline.storage.metadata import MetadataWriter

__all__ = ["BatchAborted", "BatchSummary", "Progress", "run_batch"]

IMAGE_CACHE_CONTROL = "public, max-age=31536000, immutable"


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
    cost_usd: float = 0.0
    seconds: float = 0.0
    retries: Counter[str] = field(default_factory=Counter)
    metadata_files: list[str] = field(default_factory=list)
    storage_root: str = ""
    simulated: bool = False
    first_records: list[dict[str, Any]] = field(default_factory=list)

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
            "cost_usd": round(self.cost_usd, 4),
            "seconds": round(self.seconds, 2),
            "retries": dict(self.retries),
            "storage_root": self.storage_root,
            "simulated": self.simulated,
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
    ) -> None:
        self.batch = batch
        self.client = client
        self.store = store
        self.previous = previous
        self.progress = progress
        self.flush_every = flush_every
        self.started = _now()
        self.writer = MetadataWriter(store, run_id)
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

    # -- records -------------------------------------------------------------------------

    def _base_record(self, row: GenerationRequest | RejectedRow) -> dict[str, Any]:
        created = _now()
        record: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "row": row.row,
            "image_index": 0,
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
            if records:
                keys = await asyncio.to_thread(self.writer.write, self.batch.key, records)
                self.summary.metadata_files.extend(keys)

    def _row_done(self) -> None:
        self.done_rows += 1
        if self.progress is not None:
            self.progress(Progress(self.done_rows, self.summary.rows, self.summary))

    # -- rows ----------------------------------------------------------------------------

    def _already_done(self, row: GenerationRequest | RejectedRow) -> bool:
        before = self.previous.get(row.row)
        if before is None:
            return False
        if isinstance(row, RejectedRow):
            return before["statuses"] == {"rejected"} and before["error"] == row.error
        return before["request_hash"] == row.request_hash() and bool(
            before["statuses"] & {"stored", "unsafe"}
        )

    async def reject(self, row: RejectedRow) -> None:
        record = self._base_record(row)
        record.update(status="rejected", error=row.error)
        await self._add(record)
        self._row_done()

    async def generate(self, request: GenerationRequest) -> None:
        started = time.monotonic()
        try:
            response = await self.client.generate(request)
        except IdeogramError as exc:
            if exc.fatal:
                raise
            record = self._base_record(request)
            reason = (
                "prompt failed Ideogram's safety check (HTTP 422, not billed)"
                if isinstance(exc, SafetyRejected)
                else f"generation failed after {exc.attempts} attempt(s): {exc}"
            )
            record.update(
                status="failed", error=f"row {request.row}: {reason}", attempts=exc.attempts
            )
            await self._add(record)
            self._row_done()
            return
        latency_ms = (time.monotonic() - started) * 1000
        price = price_per_image(request.model, request.rendering_speed)
        await asyncio.gather(
            *(
                self._keep_image(request, index, image, price, response.attempts, latency_ms)
                for index, image in enumerate(response.images)
            )
        )
        self._row_done()

    async def _keep_image(
        self,
        request: GenerationRequest,
        index: int,
        image: GeneratedImage,
        price: float,
        attempts: int,
        latency_ms: float,
    ) -> None:
        record = self._base_record(request)
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
                digest = hashlib.sha256(data).hexdigest()
                key = image_key(record["id"], record["date"])
                await asyncio.to_thread(self._store_image, key, data, digest, record, request)
        except LinkExpired as exc:
            record.update(
                status="failed",
                error=f"row {request.row}: image link expired before download: {exc}",
            )
        except IdeogramError as exc:
            record.update(
                status="failed",
                error=f"row {request.row}: download failed after {exc.attempts} attempt(s): {exc}",
            )
        except Exception as exc:  # storage errors: the image was paid for, say so plainly
            record.update(
                status="failed", error=f"row {request.row}: storing the image failed: {exc}"
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
        await self._add(record)

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
) -> BatchSummary:
    """Run every row of ``batch``; return the summary, or raise :class:`BatchAborted`.

    ``previous`` is the batch's recorded state (:func:`ideogram_pipeline.history.batch_state`)
    so that rows already paid for are skipped.
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
    )
    clock = time.monotonic()
    client.on_retry = lambda exc, _attempt: run.summary.retries.update([type(exc).__name__])
    tasks = []
    for row in batch.rows:
        if run._already_done(row):
            if isinstance(row, RejectedRow):
                run.summary.rejected += 1
            else:
                run.summary.skipped += 1
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
        else:
            tasks.append(asyncio.create_task(run.generate(row)))
    try:
        await asyncio.gather(*tasks)
    except IdeogramError as exc:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await run.flush()
        run.summary.seconds = time.monotonic() - clock
        raise BatchAborted(f"batch {batch.key} stopped: {exc}", run.summary) from exc
    await run.flush()
    run.summary.seconds = time.monotonic() - clock
    return run.summary

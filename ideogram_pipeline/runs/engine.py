"""One batch, end to end: generate -> download -> verify -> store -> record.

Each image is downloaded in the same task that generated it, straight away, because
Ideogram's links expire. Concurrency is plain asyncio inside one process, bounded by the
client's in-flight limiter (images, as Ideogram counts them); blocking storage calls run in
threads so they never stall the event loop.

Every CSV row ends with at least one record: ``stored``, ``unsafe``, ``rejected`` or
``failed``. A row already ``stored`` or ``unsafe`` for the same request is never sent again.

The parts, in the order a row meets them: :mod:`~ideogram_pipeline.runs.batch_run` (the
run's state and steps), :mod:`~ideogram_pipeline.runs.records` (building records, skipping
finished rows), :mod:`~ideogram_pipeline.runs.bookkeeping` and
:mod:`~ideogram_pipeline.runs.ledger` (paid work written down before and after each
request), :mod:`~ideogram_pipeline.runs.storing` (one image
kept), :mod:`~ideogram_pipeline.runs.recorder` (records flushed to the history) and
:mod:`~ideogram_pipeline.runs.summary` (what the run did), and
:mod:`~ideogram_pipeline.runs.run_endings` (how a run that stopped early ends).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.history.schema import RowState
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.images.contact_sheets import SheetTiles
from ideogram_pipeline.runs.batch_run import BatchRun
from ideogram_pipeline.runs.records import ExtraFields, already_done
from ideogram_pipeline.runs.retrying import STORAGE_RETRY, StorageRetry
from ideogram_pipeline.runs.stopping import BatchInterrupted
from ideogram_pipeline.runs.summary import BatchAborted, BatchSummary, Progress, ProgressCallback
from ideogram_pipeline.storage import ObjectStore

__all__ = [
    "BatchAborted",
    "BatchInterrupted",
    "BatchSummary",
    "Progress",
    "already_done",
    "run_batch",
]


async def run_batch(
    batch: Batch,
    client: IdeogramClient,
    store: ObjectStore,
    *,
    previous: Mapping[int, RowState] | None = None,
    run_id: str | None = None,
    simulated: bool = False,
    progress: ProgressCallback | None = None,
    flush_every: int = 500,
    existing: Mapping[str, list[dict[str, Any]]] | None = None,
    extra_fields: ExtraFields | None = None,
    api_mode: str = "async",
    resend_unknown: bool = False,
    history: HistoryTables | None = None,
    storage_retry: StorageRetry = STORAGE_RETRY,
    tiles: SheetTiles | None = None,
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
    default the tables under a local ``store``'s root). ``storage_retry`` is how long a
    storage outage is waited out. ``tiles`` receives the contact-sheet thumbnails of the
    images stored for the file's first rows, as they are stored.

    Only storage and transport errors are retried around storage; any other exception (a
    bug) propagates at once with its traceback.
    """
    run = BatchRun(
        batch,
        client,
        store,
        run_id=run_id or uuid.uuid4().hex[:12],
        simulated=simulated,
        previous=previous or {},
        progress=progress,
        flush_every=flush_every,
        history=history or HistoryTables.for_store(store),
        existing=existing or {},
        extra_fields=extra_fields,
        api_mode=api_mode,
        resend_unknown=resend_unknown,
        storage_retry=storage_retry,
        tiles=tiles,
    )
    try:
        return await run.run(_worker_count(client.limiter.max_images))
    finally:
        run.close()


def _worker_count(max_images: int) -> int:
    """Rows worked on at once: enough to keep every in-flight slot busy while as many
    finished rows download and store their images, and no more (memory stays flat)."""
    return 2 * max_images + 4

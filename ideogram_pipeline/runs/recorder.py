"""Records on their way to the history: buffered, flushed in commits, and the ledger
entries of rows whose every record is written pruned behind them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping

from ideogram_pipeline.history.schema import GenerationRecord, RowState
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.runs.ledger import Ledger
from ideogram_pipeline.runs.pools import RunPools
from ideogram_pipeline.runs.summary import BatchSummary
from ideogram_pipeline.storage import StorageError
from ideogram_pipeline.storage.public_urls import with_public_url
from ideogram_pipeline.storage.space import NoSpaceLeft, no_space_left

__all__ = ["Recorder", "RowKey"]

#: A row of the batch and its request hash: what a ledger folder belongs to.
RowKey = tuple[int, str]


class Recorder:
    """Counts each record, buffers it, and writes the buffer every ``flush_every`` records.

    Tracks which rows are finished (``concluded``), which still need their ledger entries
    (``unfinished``: an ``unknown`` record or a failed upload) and which are still adding
    records (``in_progress``), so that a flush prunes exactly the entries that can go.
    """

    def __init__(
        self,
        batch_key: str,
        *,
        summary: BatchSummary,
        history: HistoryTables,
        ledger: Ledger,
        previous: Mapping[int, RowState],
        pools: RunPools,
        flush_every: int,
        on_no_space: Callable[[NoSpaceLeft], None] | None = None,
    ) -> None:
        self.batch_key = batch_key
        self.summary = summary
        self.history = history
        self.ledger = ledger
        self.previous = previous
        self.pools = pools
        self.flush_every = flush_every
        self.pending: list[GenerationRecord] = []
        self.concluded: set[RowKey] = set()  # rows whose ledger entries can go
        self.unfinished: set[RowKey] = set()
        self.in_progress: set[RowKey] = set()  # rows still adding records
        #: Paid rows whose images the store refused: the next run stores them from the ledger.
        self.left_to_ledger: set[RowKey] = set()
        self.flush_lock = asyncio.Lock()
        self.on_no_space = on_no_space
        #: Set once the history's disk is full: records wait for one last try at the end.
        self.full: NoSpaceLeft | None = None

    @contextlib.contextmanager
    def working(self, row: GenerationRequest) -> Iterator[None]:
        """While ``row`` is still adding records, a flush leaves its ledger entries alone."""
        key = (row.row, row.request_hash())
        self.in_progress.add(key)
        try:
            yield
        finally:
            self.in_progress.discard(key)

    async def add(self, record: GenerationRecord) -> None:
        # Every stored image a run records, kept, linked or derived, gets its public URL
        # here, from its key (``IDEOGRAM_PUBLIC_BASE_URL`` set; else it stays None).
        record = with_public_url(record, self.history.settings.public_base_url)
        if record.request_hash:
            row_key = (record.row, record.request_hash)
            if record.status == "unknown" or record.failure_kind == "storage":
                self.unfinished.add(row_key)  # its ledger entry is still needed
                if record.failure_kind == "storage":
                    self.left_to_ledger.add(row_key)
            else:
                self.concluded.add(row_key)
        self.summary.count(record)
        self.pending.append(record)
        if len(self.pending) >= self.flush_every and self.full is None:
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
                stale = sorted({r.row for r in records if r.row in self.previous})
                try:
                    written = await self.pools.run(
                        self.pools.io,
                        functools.partial(self.history.write, stale_rows=stale),
                        self.batch_key,
                        records,
                    )
                except Exception as exc:
                    full = no_space_left(exc, self.history.settings.storage)
                    if full is None:
                        raise
                    # Not written, so nothing is pruned: the ledger keeps every paid row
                    # until a later run writes its records.
                    self.pending = records + self.pending
                    self.full = self.full or full
                    if self.on_no_space is not None:
                        self.on_no_space(full)
                    return
                self.summary.history_commits.append(written.generations_version)
            if ready:
                # Pruned as the run goes, so a 10,000-row batch ends without deleting 30,000
                # entries at once; entries whose deletion fails are found by the next load.
                self.concluded -= ready
                with contextlib.suppress(StorageError):
                    await self.pools.run(self.pools.io, self.ledger.prune, ready)

    def keep_entries(self, rows: set[RowKey]) -> None:
        """Keep the ledger entries of ``rows`` whatever they recorded (rows a stop cut
        mid-way: a multi-image row may have recorded only some of its images)."""
        self.unfinished |= rows

    def finished_rows(self) -> set[RowKey]:
        """Rows whose ledger entries can go once the last flush is written."""
        return self.concluded - self.unfinished

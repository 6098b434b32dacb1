"""A full disk ends a run: one error, one line, saying where and what is kept.

When any write of the run (an image, a ledger entry, the journal, the history) finds the
disk full, the engine throws the client's stop switch as a clean stop does: no new request
leaves, and the requests already sent (paid) are answered and written to the journal, in
the space its reserve gives back (``journal.py``). The run then fails with
:class:`BatchOutOfSpace`, whose message is the one line a person needs: the path that is
full, the words "no space left on device", and that the paid rows wait in the ledger for
the next run, which stores them without paying again.
"""

from __future__ import annotations

from ideogram_pipeline.runs.summary import BatchAborted, BatchSummary
from ideogram_pipeline.storage.space import NoSpaceLeft

__all__ = ["BatchOutOfSpace"]


class BatchOutOfSpace(BatchAborted):
    """The disk under the storage root (or the journal) filled up during the run."""

    def __init__(
        self, batch: str, full: NoSpaceLeft, summary: BatchSummary, *, done_rows: int, kept: int
    ) -> None:
        summary.left = max(summary.rows - done_rows, 0)
        parts = [f"batch {batch} stopped: {full}", f"{done_rows} of {summary.rows} rows done"]
        if kept:
            parts.append(
                f"{kept} paid row(s) wait in the ledger: the next run stores them without "
                "paying again"
            )
        parts.append("free space there and run the batch again")
        super().__init__("; ".join(parts), summary)
        self.full = full

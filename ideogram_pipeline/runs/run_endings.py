"""How a run that did not finish every row ends: one error that says what it did and what
it leaves, for the CLI's last line and the Dagster run's failure.

A stop on a signal (``stopping.py``), a full disk (``out_of_space.py``) and an API that
could not be reached at all each end the run differently, but each message names the
batch, counts what was done and tells the user what to do next.
"""

from __future__ import annotations

import time

from ideogram_pipeline.runs.out_of_space import BatchOutOfSpace
from ideogram_pipeline.runs.stopping import BatchInterrupted, StopState
from ideogram_pipeline.runs.summary import BatchAborted, BatchSummary
from ideogram_pipeline.storage import NoSpaceLeft

__all__ = ["interrupted", "out_of_space", "total_outage"]


def out_of_space(
    batch: str, full: NoSpaceLeft, summary: BatchSummary, *, done_rows: int, kept: int, clock: float
) -> BatchOutOfSpace:
    """The disk filled: ``kept`` paid rows wait in the ledger for the next run."""
    summary.seconds = time.monotonic() - clock
    return BatchOutOfSpace(batch, full, summary, done_rows=done_rows, kept=kept)


def interrupted(
    batch: str,
    summary: BatchSummary,
    *,
    done_rows: int,
    signals: StopState,
    reason: str | None,
    clock: float,
) -> BatchInterrupted:
    """What a stopped run did and what it leaves, as one error for the caller."""
    summary.seconds = time.monotonic() - clock
    summary.left = max(summary.rows - done_rows, 0)
    why = signals.signal_name or reason or "stop requested"
    how = "at once (second signal or grace period over)" if signals.forced else "cleanly"
    parts = [
        f"batch {batch} stopped {how} on {why}: {done_rows} of "
        f"{summary.rows} rows done, {summary.left} left"
    ]
    if summary.left_submitted:
        parts.append(
            f"{summary.left_submitted} already submitted to Ideogram (the next run "
            "collects them without paying again)"
        )
    if signals.forced:
        parts.append(
            "requests cut off mid-flight may have been billed: the next run reports them as unknown"
        )
    parts.append("run the batch again to finish it")
    return BatchInterrupted("; ".join(parts), summary)


def total_outage(
    batch: str,
    summary: BatchSummary,
    *,
    base_url: str,
    rows_sent: int,
    transport_failures: int,
    last_error: str,
) -> BatchAborted | None:
    """A run where not one request got through did not run: say so, as an error."""
    if not rows_sent or transport_failures != rows_sent:
        return None
    return BatchAborted(
        f"batch {batch}: the Ideogram API at {base_url} could not be reached: all "
        f"{rows_sent} rows sent failed on transport ({last_error}); nothing was generated",
        summary,
    )

"""The batch asset's progress lines, written to Dagster's log off the run's event loop.

The engine reports progress from its event loop, the one that submits requests and polls
Ideogram's generations. Each line in Dagster's log is a write to the instance's event log
(a database commit: tens of milliseconds on a busy disk, 0.5 s in all for a 300-row run
when measured, up to 0.25 s for one line), and while the loop waits on it, generations that
completed are not seen and their in-flight slots sit idle. So the lines go through one
thread of their own, in order, and every one is written before the block ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from ideogram_pipeline.runs.summary import Progress

__all__ = ["PROGRESS_EVERY_S", "progress_lines"]

#: Seconds between two progress lines (the last row always gets one).
PROGRESS_EVERY_S = 2.0


def _line(progress: Progress) -> str:
    s = progress.summary
    return (
        f"{progress.done_rows}/{progress.total_rows} rows: stored {s.stored}, "
        f"unsafe {s.unsafe}, rejected {s.rejected}, failed {s.failed}, "
        f"skipped {s.skipped}, cost ${s.cost_usd:.2f}"
    )


@contextlib.contextmanager
def progress_lines(log: dg.DagsterLogManager) -> Iterator[Callable[[Progress], None]]:
    """A progress callback for the engine that logs a line every :data:`PROGRESS_EVERY_S`
    and at the last row, from a writer thread; leaving the block waits for every line."""
    last = 0.0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress-log") as writer:

        def report(progress: Progress) -> None:
            nonlocal last
            now = time.monotonic()
            if progress.done_rows == progress.total_rows or now - last >= PROGRESS_EVERY_S:
                last = now
                writer.submit(log.info, _line(progress))

        yield report

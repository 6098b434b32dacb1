"""A batch the command line started before Dagster was up, handed to the asset that records it.

``ideogram-pipeline run`` is a Dagster run like one launched from the UI, but importing
Dagster and reaching the asset's body takes 3-7 s on a small machine, while a minimal
client sends its first request within 0.3 s (BENCHMARKS.md section 8). So the command
sends first: it takes the batch's lease and runs the batch in its main thread (where the
clean stop's signal handlers work), while a thread beside it brings Dagster up and
materializes the partition under a run id chosen beforehand. The asset of that run finds
the batch here by its run id and adopts it instead of running it again: it logs the
progress so far and from then on, marks a dead runner's run failed when the lease was
taken over from one, and handles the batch's outcome as if it had run the batch itself.

Nothing here imports Dagster: the command hands the batch over before Dagster is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.images.contact_sheets import SheetTiles
from ideogram_pipeline.runs.lease import LeaseHolder
from ideogram_pipeline.runs.summary import BatchSummary, Progress, ProgressCallback
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = ["StartedBatch", "adopt", "hand_over"]

TakeoverCallback = Callable[[LeaseHolder], None]


@dataclass(eq=False)
class StartedBatch:
    """One batch running in this process, waiting for the Dagster run ``run_id`` to adopt it.

    The engine calls :meth:`report` and :meth:`took_over` from its own threads from the
    start; until the asset attaches, the latest progress (each line counts everything so
    far) and any takeover are kept, then passed on. The command sets ``outcome`` to the
    engine's summary or exception when the batch ends.
    """

    run_id: str
    batch: Batch
    settings: Settings
    store: ObjectStore
    tiles: SheetTiles
    outcome: Future[BatchSummary] = field(default_factory=Future)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _latest: Progress | None = None
    _takeovers: list[LeaseHolder] = field(default_factory=list)
    _report: ProgressCallback | None = None
    _on_takeover: TakeoverCallback | None = None

    def report(self, progress: Progress) -> None:
        with self._lock:
            report = self._report
            if report is None:
                self._latest = progress
                return
        report(progress)

    def took_over(self, dead: LeaseHolder) -> None:
        with self._lock:
            on_takeover = self._on_takeover
            if on_takeover is None:
                self._takeovers.append(dead)
                return
        on_takeover(dead)

    def follow(self, report: ProgressCallback, on_takeover: TakeoverCallback) -> BatchSummary:
        """Attach the asset's progress log and takeover handler, then wait for the batch:
        its summary, or the exception it ended with, raised here as if the batch ran here.

        What came before is passed on first, in order, and only then are the handlers
        published to the engine's threads, so a newer line never precedes an older one.
        Whatever happens here, they are detached on the way out: the asset's log closes
        after this, and the engine may still be running.
        """
        try:
            while True:
                with self._lock:
                    latest, self._latest = self._latest, None
                    takeovers, self._takeovers = self._takeovers, []
                    if latest is None and not takeovers:
                        self._report, self._on_takeover = report, on_takeover
                        break
                for dead in takeovers:
                    on_takeover(dead)
                if latest is not None:
                    report(latest)
            return self.outcome.result()
        finally:
            with self._lock:
                self._report = self._on_takeover = None


_started: dict[str, StartedBatch] = {}
_registry_lock = threading.Lock()


def hand_over(started: StartedBatch) -> None:
    """Leave ``started`` for the asset of its Dagster run to adopt."""
    with _registry_lock:
        _started[started.run_id] = started


def adopt(run_id: str) -> StartedBatch | None:
    """The batch this process started for the Dagster run ``run_id``, if any (once)."""
    with _registry_lock:
        return _started.pop(run_id, None)

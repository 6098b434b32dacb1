"""A CLI ``run``: the batch starts sending at once, and Dagster records it from beside it.

Importing Dagster and reaching the batch asset's body took 3-7 s of a whole run's start-up
on a 2-core machine; every second of it is a second the account's in-flight slots sit idle
(BENCHMARKS.md section 8). So the batch runs in the main thread from the start (the clean
stop's signal handlers need the main thread), and a thread beside it brings Dagster up and
materializes the partition under a run id chosen here. The asset of that run adopts the
batch (``runs/handoff.py``): the run's log, metadata, checks and status (SUCCESS, FAILURE,
CANCELED) are what they would be had the asset run the batch itself. The Dagster run is
created a few seconds after the first request, and its start time says so.
"""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.images.contact_sheets import SheetTiles
from ideogram_pipeline.runs.handoff import StartedBatch, adopt, hand_over
from ideogram_pipeline.runs.stopping import BatchInterrupted
from ideogram_pipeline.runs.summary import BatchSummary
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

if TYPE_CHECKING:
    from ideogram_pipeline.cli.launch import LaunchResult

__all__ = ["LOOP_SWITCH_INTERVAL_S", "run_recorded"]

#: The interpreter's thread switch interval while the batch runs beside Dagster's start-up.
LOOP_SWITCH_INTERVAL_S = 0.0005
#: The ``BatchConfig`` fields the engine takes from a CLI run, named as ``execute_batch``'s
#: keywords (overrides and dry runs are the launchpad's: a CLI dry run only estimates, and
#: never reaches Dagster).
ENGINE_CONFIG = frozenset({"max_cost_usd", "force", "resend_unknown"})


class _Recording(threading.Thread):
    """Dagster's side of the run: import, open the instance, materialize the partition."""

    def __init__(self, csv_path: Path, key: str, config: dict[str, Any], run_id: str) -> None:
        # A daemon: a second Ctrl-C while the run is recorded ends the process at once.
        super().__init__(name="dagster-run", daemon=True)
        self.csv_path, self.key, self.config, self.run_id = csv_path, key, config, run_id
        self.result: LaunchResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            from ideogram_pipeline.cli.launch import materialize_batch

            self.result = materialize_batch(
                self.csv_path, self.key, self.config, run_id=self.run_id
            )
        except BaseException as exc:  # handed to the main thread, which says what happened
            self.error = exc

    def wait(self) -> None:
        try:
            self.join()  # a lock wait: Ctrl-C interrupts it
        except KeyboardInterrupt:
            raise click.ClickException(
                f"batch {self.key}: interrupted while Dagster recorded run {self.run_id}; "
                "what the batch did is in the history"
            ) from None


def _counts(summary: BatchSummary) -> str:
    return (
        f"stored {summary.stored}, unsafe {summary.unsafe}, rejected {summary.rejected}, "
        f"failed {summary.failed}, unknown {summary.unknown}, left {summary.left}"
    )


def run_recorded(
    csv_path: Path,
    batch: Batch,
    settings: Settings,
    store: ObjectStore,
    config: dict[str, Any],
) -> LaunchResult:
    """Run ``batch`` here and now, recorded as a Dagster run of its partition.

    ``config`` holds the run's ``BatchConfig`` fields (``max_cost_usd``, ``force``,
    ``resend_unknown``). The result is the Dagster run's, as ``materialize_batch`` gives
    it. Should Dagster fail before its asset adopts the batch, the batch still runs to its
    end (its records are in the history and the ledger) and the command fails saying so.
    """
    from ideogram_pipeline.runs.runner import execute_batch

    if unknown := set(config) - ENGINE_CONFIG:  # the engine must run what Dagster records
        raise ValueError(f"run_recorded takes only {sorted(ENGINE_CONFIG)}, not {sorted(unknown)}")
    run_id = str(uuid.uuid4())
    tiles = SheetTiles(row.row for row in batch.rows)
    started = StartedBatch(run_id, batch, settings, store, tiles)
    recording = _Recording(csv_path, batch.key, config, run_id)
    # Dagster's import and start-up hold the GIL for seconds beside the batch's first
    # requests, and Python makes a thread that wants the GIL wait up to the switch interval
    # (5 ms) for it: the event loop waited that long at each wake-up (an answer, a poll's
    # moment). A shorter interval lets the loop in promptly (BENCHMARKS.md section 8).
    switch_interval = sys.getswitchinterval()
    hand_over(started)
    try:
        sys.setswitchinterval(LOOP_SWITCH_INTERVAL_S)
        recording.start()
        summary = execute_batch(
            batch,
            settings,
            store=store,
            run_id=run_id[:12],  # the history's run_id column, as the asset would pass it
            progress=started.report,
            on_takeover=started.took_over,
            tiles=tiles,
            **config,  # ENGINE_CONFIG: the fields are execute_batch's keywords
        )
    except KeyboardInterrupt:
        # Ctrl-C while the batch's event loop did not hold the signals: while the history
        # was read, before any request, or once the last one was recorded.
        stopped = BatchSummary(batch=batch.key, run_id=run_id[:12], storage_root=store.root)
        message = "SIGINT received while no request was being sent"
        started.outcome.set_exception(BatchInterrupted(message, stopped))
    except Exception as exc:  # the asset handles it as if the batch had raised it there
        started.outcome.set_exception(exc)
    else:
        started.outcome.set_result(summary)
    finally:
        sys.setswitchinterval(switch_interval)
        if not started.outcome.done():  # SystemExit, a cancellation, a second Ctrl-C above
            started.outcome.set_exception(RuntimeError(f"batch {batch.key} did not end"))
    recording.wait()
    if adopt(run_id) is None and recording.result is not None:
        return recording.result
    # Dagster failed before its asset took the batch over: the run is not recorded.
    why = recording.result.error if recording.result is not None else recording.error
    outcome = started.outcome.exception() or started.outcome.result()
    ran = f"ran ({_counts(outcome)})" if isinstance(outcome, BatchSummary) else f"ended: {outcome}"
    raise click.ClickException(
        f"batch {batch.key} {ran}, but Dagster could not record run {run_id}: {why}"
    )

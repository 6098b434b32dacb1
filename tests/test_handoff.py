"""The hand-over between a batch the CLI started and the Dagster asset that adopts it.

Threads as they run in a CLI run: the engine's (here, a thread reporting progress and a
takeover) and the asset's (``follow``). Nothing is faked: real batch, store and records.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ideogram_pipeline.batches.files import load_batch
from ideogram_pipeline.images.contact_sheets import SheetTiles
from ideogram_pipeline.runs.handoff import StartedBatch, adopt, hand_over
from ideogram_pipeline.runs.lease import LeaseHolder
from ideogram_pipeline.runs.summary import BatchSummary, Progress
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import LocalStore


def _started(tmp_path: Path, run_id: str = "run-1") -> StartedBatch:
    csv = tmp_path / "herons.csv"
    csv.write_text("prompt\nA heron\nTwo herons\n", encoding="utf-8")
    batch = load_batch(csv, key="herons")
    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "data")})
    return StartedBatch(run_id, batch, settings, LocalStore(tmp_path / "data"), SheetTiles([]))


def _progress(done: int) -> Progress:
    return Progress(done, 2, BatchSummary(batch="herons", run_id="run-1", stored=done))


def _dead() -> LeaseHolder:
    return LeaseHolder("dead-run", "elsewhere", 1, 0.0, 60.0, "token")


def test_what_came_before_the_asset_attached_is_passed_on_first_then_the_rest(
    tmp_path: Path,
) -> None:
    started = _started(tmp_path)
    started.report(_progress(0))
    started.took_over(_dead())
    started.report(_progress(1))  # only the latest line counts: each says everything so far
    seen: list[object] = []
    attached = threading.Event()

    def report(progress: Progress) -> None:
        seen.append(progress.done_rows)
        attached.set()

    def engine() -> None:  # the batch goes on once the asset has attached, then ends
        attached.wait(10)
        started.report(_progress(2))
        started.outcome.set_result(BatchSummary(batch="herons", run_id="run-1", stored=2))

    thread = threading.Thread(target=engine)
    thread.start()
    summary = started.follow(report, lambda dead: seen.append(dead.run_id))
    thread.join()
    assert seen == ["dead-run", 1, 2]
    assert summary.stored == 2


def test_the_handlers_are_detached_when_following_fails(tmp_path: Path) -> None:
    """A takeover handler that raises ends the asset's wait, not the batch: later progress
    is kept for no one instead of reaching a log that has closed."""
    started = _started(tmp_path)
    started.took_over(_dead())
    reported: list[int] = []

    def refuse(_dead: LeaseHolder) -> None:
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="locked"):
        started.follow(lambda progress: reported.append(progress.done_rows), refuse)
    started.report(_progress(1))  # the engine, still running, reports on
    assert reported == []


def test_the_batchs_exception_is_raised_where_it_is_followed(tmp_path: Path) -> None:
    started = _started(tmp_path)
    started.outcome.set_exception(ValueError("out of credits"))
    with pytest.raises(ValueError, match="out of credits"):
        started.follow(lambda _progress: None, lambda _dead: None)


def test_a_started_batch_is_adopted_once_by_its_run_id(tmp_path: Path) -> None:
    started = _started(tmp_path, run_id="run-2")
    hand_over(started)
    assert adopt("another-run") is None
    assert adopt("run-2") is started
    assert adopt("run-2") is None

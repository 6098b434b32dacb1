"""A full disk: the run stops at once with one line, and every paid image is recovered.

Nothing is faked: the storage root (or the journal's folder) is a real tmpfs of a few MB,
mounted for the test and unmounted after it; the disk is filled by the images themselves
or by a filler file, and freed by growing the tmpfs (``remount``) or deleting the filler.
The simulator runs in this process so its billing counters prove what was paid, and how
often. Mounting needs root: without it the tests skip, except in CI, where they fail (as
the deployment tests do).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import Batch, parse_batch
from ideogram_pipeline.runs.journal import JOURNAL_PREFIX, RESERVE_NAME, Journal
from ideogram_pipeline.runs.lease import acquire_lease
from ideogram_pipeline.runs.out_of_space import BatchOutOfSpace
from ideogram_pipeline.runs.retrying import is_storage_outage
from ideogram_pipeline.runs.runner import estimate_batch, execute_batch
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore, NoSpaceLeft, StorageError
from ideogram_pipeline.storage.space import RESERVE_BYTES, no_space_left
from tests.conftest import make_env, new_bucket
from tests.deploy_support import service_missing
from tests.support.cli_runs import RUN
from tests.support.seaweed import SeaweedServer

PROMPT = "A lighthouse on a cliff at dusk, study {n}"

Mount = Callable[[Path, str], Path]


def _mount(where: Path, size: str) -> None:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        service_missing(f"cannot mount a tmpfs at {where} (needs root): {result.stderr.strip()}")


def _resize(where: Path, size: str) -> None:
    """Free space the way an operator would: grow the filesystem (its files stay)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


@pytest.fixture
def tmpfs() -> Iterator[Mount]:
    """``mount(path, size)``: a fresh tmpfs at ``path``, unmounted after the test."""
    if shutil.which("mount") is None:
        service_missing("no mount command: cannot make a small filesystem")
    mounted: list[Path] = []

    def mount(where: Path, size: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        _mount(where, size)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def _fill(folder: Path, leave_bytes: int) -> Path:
    """A filler file taking all the free space under ``folder`` but ``leave_bytes``."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / f"filler-{uuid.uuid4().hex[:8]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if free > leave_bytes:
            os.posix_fallocate(fd, 0, free - leave_bytes)
    finally:
        os.close(fd)
    return filler


def _csv_text(rows: int) -> str:
    lines = ["prompt,seed"] + [f'"{PROMPT.format(n=n)}",{n}' for n in range(rows)]
    return "\n".join(lines) + "\n"


def _batch(rows: int, key: str) -> Batch:
    return parse_batch(_csv_text(rows).encode(), key=key)


def _settings(sim: Simulator, storage: Path, api_mode: str, inflight: int) -> Settings:
    return load_settings(
        {
            "IDEOGRAM_STORAGE": str(storage),
            "IDEOGRAM_API_KEY": sim.api_key,
            "IDEOGRAM_BASE_URL": sim.base_url,
            "IDEOGRAM_MAX_INFLIGHT": str(inflight),
            "IDEOGRAM_API_MODE": api_mode,
        }
    )


def _statuses(settings: Settings, batch: str) -> dict[str, int]:
    con = history.connect(settings)
    try:
        rows = con.execute(
            "SELECT status, count(*) FROM generations WHERE batch = ? GROUP BY 1", [batch]
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def _billed_once_each(sim: Simulator, rows: int) -> None:
    billed = dict(sim.stats.billed_by_prompt_seed)
    assert set(billed.values()) == {1}, billed  # nothing paid twice
    assert len(billed) == rows


# -- what a full disk is ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        NoSpaceLeft("/data"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        # deltalake keeps only the Rust text
        Exception(
            "Failed to parse parquet: External: Generic LocalFileSystem error: Unable to copy "
            "data to file: No space left on device (os error 28)"
        ),
    ],
)
def test_a_full_disk_is_recognised_and_never_waited_out(error: Exception) -> None:
    full = no_space_left(error, "/data")
    assert full is not None and "no space left on device" in str(full)
    assert isinstance(full, StorageError)
    assert is_storage_outage(error) is False  # the other storage errors are retried


def test_other_errors_are_not_a_full_disk() -> None:
    assert no_space_left(ConnectionRefusedError("store restarting"), "/data") is None
    assert no_space_left(OSError(errno.EACCES, "Permission denied"), "/data") is None
    assert is_storage_outage(ConnectionRefusedError("store restarting")) is True


# -- the engine, on a real small filesystem -----------------------------------------------------


def _wait_until(done: Callable[[], bool], timeout: float = 30) -> None:
    """Poll ``done`` (a deadline against a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.02)


@pytest.mark.parametrize("api_mode", ["async", "sync"])
def test_rows_failed_on_storage_are_stored_from_the_ledger_without_paying(
    tmp_path: Path, tmpfs: Mount, api_mode: str
) -> None:
    """The disk takes the ledger and the history but not the images: the first image that
    does not fit stops the run (no retries, nothing sent after it), the rows already paid
    are recorded ``failed`` on storage, and once space is freed a dry run reads the batch
    (this state used to crash it) and the next run stores them without paying again."""
    disk = tmpfs(tmp_path / "disk", "16m")  # room for every image once the filler goes
    root = disk / "root"
    filler = _fill(disk, leave_bytes=RESERVE_BYTES + 448 * 1024)  # < one image (~1 MB)
    rows, key = 12, "damaged"
    config = SimulatorConfig(latency_s=0.2, max_inflight=3, image_scale=1.0)
    with running_simulator(config) as sim:
        settings = _settings(sim, root, api_mode, inflight=3)
        with pytest.raises(BatchOutOfSpace) as stopped:
            execute_batch(_batch(rows, key), settings, run_id="full")
        message = str(stopped.value)
        # Generations the stopped run left running (async) bill when they complete.
        _wait_until(lambda: sim.stats.images_inflight == 0)
        billed_first = sim.stats.billed_images
        assert f"no space left on device at {root}" in message and "\n" not in message
        assert "the next run stores them without paying again" in message
        assert "StorageError" not in stopped.value.summary.retries  # not waited out
        assert 0 < billed_first < rows  # stopped sending once the disk was full

        # Paid rows whose every image failed on storage are in the history as such.
        state = history.batch_state(settings, LocalStore(root), key)
        failed = [row for row, s in state.items() if s.statuses == {"failed"}]
        assert failed and all(state[row].indexes == frozenset() for row in failed)
        assert all(
            "the next run stores it from the ledger" in (state[r].error or "") for r in failed
        )
        assert _statuses(settings, key).get("unknown") is None

        filler.unlink()
        # The dry run reads this batch (it used to crash) and prices only the rows never
        # paid: the paid ones are finished from the ledger for nothing.
        estimate = estimate_batch(_batch(rows, key), settings)
        stored_before = sum(1 for s in state.values() if "stored" in s.statuses)
        assert estimate.rows_recovered == billed_first - stored_before
        assert estimate.rows_to_send == rows - billed_first
        assert execute_batch(_batch(rows, key), settings, dry_run=True).dry_run
        summary = execute_batch(_batch(rows, key), settings, run_id="freed")
        assert summary.stored == rows and summary.failed == 0 and summary.unknown == 0
        _billed_once_each(sim, rows)  # the rows paid before the disk filled: not again
    assert _statuses(settings, key) == {"stored": rows}
    assert not list((root / "ledger" / key).rglob("*.json"))  # every paid row concluded


def test_a_full_journal_stops_the_run_before_the_request_leaves(
    tmp_path: Path, tmpfs: Mount
) -> None:
    """The journal's own folder is a tmpfs with room for its reserve and two pages: once
    an intent does not fit, that request is never sent (no request leaves without its
    intent written down), while the generation ids of requests already sent go into the
    reserve's space (when the page in hand is full), so the next run collects them without
    paying again."""
    root = tmp_path / "root"
    journal = tmpfs(root / JOURNAL_PREFIX, f"{RESERVE_BYTES // 1024 + 8}k")
    rows, key = 40, "journal-full"
    config = SimulatorConfig(latency_s=0.3, max_inflight=4, image_scale=0.25)
    with running_simulator(config) as sim:
        settings = _settings(sim, root, "async", inflight=4)
        with pytest.raises(BatchOutOfSpace, match=f"no space left on device at {journal}"):
            execute_batch(_batch(rows, key), settings, run_id="full")
        billed = {prompt for prompt, _seed in sim.stats.billed_by_prompt_seed}
        assert 0 < len(billed) < rows
        # An intent cut short by the full disk is a torn line: read() skips it, as a run does.
        events = [event for path in (journal / key).glob("*.jsonl") for event in Journal.read(path)]
        intents = {event["row"] for event in events if event["event"] == "intent"}
        submitted = {event["row"] for event in events if event["event"] == "submitted"}
        billed_rows = {int(prompt.rsplit(" ", 1)[1]) + 1 for prompt in billed}
        assert billed_rows <= intents  # never sent without its intent
        assert billed_rows <= submitted  # and every paid generation's id kept

        _resize(journal, "4m")
        summary = execute_batch(_batch(rows, key), settings, run_id="freed")
        assert summary.stored + summary.skipped == rows and summary.unknown == 0
        _billed_once_each(sim, rows)
    assert _statuses(settings, key) == {"stored": rows}


@pytest.mark.parametrize("api_mode", ["async", "sync"])
def test_a_disk_full_during_ledger_writes_leaves_nothing_unknown(
    tmp_path: Path, tmpfs: Mount, api_mode: str
) -> None:
    """Only the journal's reserve and a few pages fit: the store's ledger entries and the
    history are what the disk refuses first. The answers of requests already sent go to
    the journal, the run ends with the one line, and the next run finishes every paid row
    from them: none is ``unknown``, none is paid twice."""
    disk = tmpfs(tmp_path / "disk", "8m")
    root = disk / "root"
    filler = _fill(disk, leave_bytes=RESERVE_BYTES + 48 * 1024)
    rows, key = 10, "ledger-full"
    config = SimulatorConfig(latency_s=0.2, max_inflight=3, image_scale=0.25)
    with running_simulator(config) as sim:
        settings = _settings(sim, root, api_mode, inflight=3)
        with pytest.raises(BatchOutOfSpace, match=f"no space left on device at {root}"):
            execute_batch(_batch(rows, key), settings, run_id="full")
        assert 0 < sim.stats.billed_images < rows
        # The store's ledger refused entries: the journal holds them for the next run.
        assert list((root / JOURNAL_PREFIX / key).glob("*.jsonl"))

        filler.unlink()
        summary = execute_batch(_batch(rows, key), settings, run_id="freed")
        assert summary.unknown == 0 and summary.failed == 0
        _billed_once_each(sim, rows)
    assert _statuses(settings, key) == {"stored": rows}


def test_an_s3_root_whose_local_journal_fills_keeps_every_paid_row(
    tmp_path: Path, tmpfs: Mount, s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 root's journal lives on this machine (``XDG_STATE_HOME``): when that disk
    fills, no request leaves without its intent, the answers still reach the bucket's
    ledger, and the next run pays for nothing twice."""
    state = tmpfs(tmp_path / "state", f"{RESERVE_BYTES // 1024 + 8}k")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    rows, key = 30, "s3-journal-full"
    config = SimulatorConfig(latency_s=0.3, max_inflight=4, image_scale=0.25)
    with running_simulator(config) as sim:
        settings = load_settings(
            {
                "IDEOGRAM_STORAGE": f"s3://{new_bucket(s3_server)}/prefix",
                "IDEOGRAM_API_KEY": sim.api_key,
                "IDEOGRAM_BASE_URL": sim.base_url,
                "IDEOGRAM_MAX_INFLIGHT": "4",
                **s3_server.env(),
            }
        )
        with pytest.raises(BatchOutOfSpace, match=f"no space left on device at {state}"):
            execute_batch(_batch(rows, key), settings, run_id="full")
        assert 0 < sim.stats.billed_images < rows

        _resize(state, "4m")
        summary = execute_batch(_batch(rows, key), settings, run_id="freed")
        assert summary.unknown == 0 and summary.failed == 0
        _billed_once_each(sim, rows)
    assert _statuses(settings, key) == {"stored": rows}


def test_the_journal_reserve_takes_answers_but_never_an_intent(
    tmp_path: Path, tmpfs: Mount
) -> None:
    """On a folder with room for the reserve and one page: intents fill the page until one
    does not fit (refused), an answer then frees the reserve and is written in its space,
    and no intent is written after that although there is room again."""
    folder = tmpfs(tmp_path / "journal", f"{RESERVE_BYTES // 1024 + 4}k")
    journal = Journal(folder, "tiny")
    intent = {"event": "intent", "row": 0, "pad": "x" * 300}
    written = 0
    with pytest.raises(NoSpaceLeft, match=f"no space left on device at {folder / 'tiny'}"):
        for written in range(1, 1000):
            journal.append({**intent, "row": written})
    assert (folder / RESERVE_NAME).exists() and journal.full is not None

    journal.append({"event": "submitted", "row": 1, "generation_id": "g"}, use_reserve=True)
    assert not (folder / RESERVE_NAME).exists()
    with pytest.raises(NoSpaceLeft):
        journal.append({**intent, "row": written + 1})
    journal.close()
    events = Journal.read(journal.path)  # the intent cut short (if any) is a torn line
    assert [e["row"] for e in events if e["event"] == "intent"] == list(range(1, written))
    assert events[-1] == {"event": "submitted", "row": 1, "generation_id": "g"}


def test_a_lease_that_cannot_be_marked_released_is_withdrawn(tmp_path: Path, tmpfs: Mount) -> None:
    """The disk is full when the run ends: releasing its lease must neither fail (hiding
    the run's own error) nor keep the batch locked for the next run, even in this process."""
    disk = tmpfs(tmp_path / "disk", "1m")
    store = LocalStore(disk / "root")
    lease = acquire_lease(store, "locked", "full")
    _fill(disk, leave_bytes=0)
    lease.release()  # no NoSpaceLeft out of it
    again = acquire_lease(store, "locked", "freed")  # at once, by the same process
    again.release()


def test_a_run_on_a_full_disk_sends_nothing(tmp_path: Path, tmpfs: Mount) -> None:
    disk = tmpfs(tmp_path / "disk", "1m")
    _fill(disk, leave_bytes=0)
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        settings = _settings(sim, disk / "root", "async", inflight=2)
        with pytest.raises(StorageError, match=f"no space left on device at {disk / 'root'}"):
            execute_batch(_batch(3, "nothing"), settings)
        assert sim.stats.requests_total == 0


# -- the CLI through Dagster: the 60-row batch on a 3 MB root ------------------------


def _dagster_failure(home: Path) -> str:
    """The failure the one Dagster run recorded (the message the UI shows for it)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
        failures = [
            entry.dagster_event.step_failure_data
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            if entry.dagster_event is not None
        ]
    user_failure = failures[-1].user_failure_data
    assert user_failure is not None and user_failure.description is not None
    return str(user_failure.description)


@pytest.mark.slow
def test_the_cli_stops_with_one_line_and_the_rerun_pays_nothing_twice(
    tmp_path: Path, tmpfs: Mount
) -> None:
    disk = tmpfs(tmp_path / "disk", "3m")
    root = disk / "root"
    rows = 60
    csv = tmp_path / "lighthouses.csv"
    csv.write_text(_csv_text(rows), encoding="utf-8")
    (tmp_path / "home").mkdir()
    config = SimulatorConfig(latency_s=0.3, max_inflight=10, image_scale=1.0)
    with running_simulator(config) as sim:
        env = make_env(
            storage=str(root),
            IDEOGRAM_API_KEY=sim.api_key,
            IDEOGRAM_BASE_URL=sim.base_url,
            DAGSTER_HOME=str(tmp_path / "home"),
        )
        started = time.monotonic()
        full = subprocess.run([*RUN, str(csv)], env=env, capture_output=True, text=True)
        took = time.monotonic() - started  # reported below, never asserted
        billed_first = sim.stats.billed_images
        assert full.returncode != 0, full.stdout + full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: batch lighthouses stopped: no space left on device at ")
        assert str(root) in last and "run the batch again" in last
        assert "StorageError" not in full.stdout  # no storage retries in the summary
        # The Dagster run failed with that line as its message, not a library's trace.
        assert _dagster_failure(tmp_path / "home") == last.removeprefix("Error: ")
        assert billed_first < rows
        stored_first = _statuses(load_settings(env), "lighthouses").get("stored", 0)

        _resize(disk, "128m")
        dry = subprocess.run([*RUN, str(csv), "--dry-run"], env=env, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert "collected from ledger" in dry.stdout, dry.stdout
        # The cost guard prices only the rows never paid: a budget for those is enough.
        budget = f"{(rows - billed_first) * 0.06 + 0.005:.3f}"  # V_3 DEFAULT: $0.06
        rerun = subprocess.run(
            [*RUN, str(csv), "--max-cost", budget], env=env, capture_output=True, text=True
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        _billed_once_each(sim, rows)
    assert _statuses(load_settings(env), "lighthouses") == {"stored": rows}
    print(
        f"\n60 rows on a 3 MB root: first run billed {billed_first}, stored {stored_first}, "
        f"exited after {took:.1f} s; rerun billed {rows - billed_first} new rows, 0 again"
    )

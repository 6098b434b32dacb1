"""Ctrl-C and SIGTERM on a real CLI run: no hang, no spend after the signal, nothing paid twice.

Nothing is faked: the batch runs through the CLI (Dagster in-process, in a subprocess), the
simulator runs in this process so the test can read its billing counters at the moment the
signal is sent, and storage is a real folder. The Dagster instance is opened afterwards to
check how the run was recorded.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.conftest import make_env
from tests.support.cli_runs import RUN, simulator_env, write_batch

ROWS = 30
LIMIT = 4


def _csv(path: Path, rows: int = ROWS) -> Path:
    return write_batch(path, "A paper lantern shaped like fish {}", rows)


def _env(sim: Simulator, tmp_path: Path, api_mode: str) -> dict[str, str]:
    return simulator_env(
        sim, tmp_path, IDEOGRAM_MAX_INFLIGHT=str(LIMIT), IDEOGRAM_API_MODE=api_mode
    )


def _signal_when(
    process: subprocess.Popen[str], sim: Simulator, billed: int, signals: list[int]
) -> tuple[int, int]:
    """Send ``signals`` (0.2 s apart) once ``billed`` images are billed; return the billed
    images and the images in flight just after."""
    deadline = time.monotonic() + 90
    while sim.stats.billed_images < billed:
        assert process.poll() is None, "the batch finished before the signal"
        assert time.monotonic() < deadline, "the batch never reached the signal point"
        time.sleep(0.005)
    for n, signum in enumerate(signals):
        if n:
            time.sleep(0.2)
        os.kill(process.pid, signum)
    # Once the process has surely taken the signal, everything it sent is billed or in
    # flight: nothing beyond that may be billed later.
    time.sleep(0.3)
    with sim.stats._lock:  # one consistent reading of both counters
        return sim.stats.billed_images, sim.stats.images_inflight


def _run_statuses(home: Path) -> list[dg.DagsterRunStatus]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [run.status for run in instance.get_runs()]


@pytest.mark.parametrize(
    ("api_mode", "signum"),
    [("async", signal.SIGINT), ("sync", signal.SIGTERM), ("async", signal.SIGTERM)],
)
@pytest.mark.slow
def test_first_signal_stops_spending_and_the_rerun_pays_nothing_twice(
    tmp_path: Path, api_mode: str, signum: int
) -> None:
    config = SimulatorConfig(latency_s=0.5, max_inflight=LIMIT, image_scale=0.25)
    csv = _csv(tmp_path / "lanterns.csv")
    (tmp_path / "home").mkdir()
    with running_simulator(config) as sim:
        env = _env(sim, tmp_path, api_mode)
        process = subprocess.Popen(
            [*RUN, str(csv)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            billed_at, inflight_at = _signal_when(
                process, sim, random.randint(1, ROWS // 2), [signum]
            )
            signalled = time.monotonic()
            out, err = process.communicate(timeout=30)
            took = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        billed_after_stop = sim.stats.billed_images
        assert process.returncode != 0, out + err
        assert took < 30
        assert "stopped cleanly" in err, err[-3000:]
        assert "left" in err
        # Only requests already sent when the signal arrived were paid for afterwards.
        assert billed_after_stop <= billed_at + inflight_at, (billed_at, inflight_at)
        assert _run_statuses(tmp_path / "home") == [dg.DagsterRunStatus.CANCELED]

        rerun = subprocess.run(
            [*RUN, str(csv)], env=env, capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        billed = dict(sim.stats.billed_by_prompt_seed)

    assert all(count == 1 for count in billed.values()), billed  # nothing paid twice
    assert len(billed) == ROWS
    con = history.connect(load_settings(env))
    statuses = con.execute("SELECT status, count(*) FROM generations GROUP BY 1").fetchall()
    con.close()
    assert statuses == [("stored", ROWS)]


@pytest.mark.slow
def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    config = SimulatorConfig(latency_s=10.0, max_inflight=LIMIT, image_scale=0.25)
    csv = _csv(tmp_path / "lanterns.csv", rows=12)
    (tmp_path / "home").mkdir()
    with running_simulator(config) as sim:
        env = _env(sim, tmp_path, "sync")
        process = subprocess.Popen(
            [*RUN, str(csv)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            # Requests take 10 s: the second signal cuts them off instead of waiting. The
            # run sends before Dagster is up, so the signals can come before the Dagster
            # run exists: the process still records it CANCELED before it exits.
            deadline = time.monotonic() + 60
            while sim.stats.images_inflight < LIMIT:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            os.kill(process.pid, signal.SIGINT)
            time.sleep(0.2)
            os.kill(process.pid, signal.SIGINT)
            cut = time.monotonic()
            _out, err = process.communicate(timeout=30)
            took = time.monotonic() - cut
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode != 0
        assert took < 7.0, took  # well before the 10 s requests could have finished
        assert "stopped at once" in err, err[-3000:]
        assert sim.stats.billed_images <= LIMIT
    assert _run_statuses(tmp_path / "home") == [dg.DagsterRunStatus.CANCELED]


@pytest.mark.slow
def test_unreachable_api_exits_non_zero_with_one_message(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "lanterns.csv", rows=2)
    env = make_env(
        storage=str(tmp_path / "storage"),
        IDEOGRAM_API_KEY="a-key-for-nowhere",
        IDEOGRAM_BASE_URL="http://127.0.0.1:1",
        DAGSTER_HOME=str(tmp_path / "home"),
    )
    (tmp_path / "home").mkdir()
    result = subprocess.run([*RUN, str(csv)], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    assert "could not be reached" in result.stderr, result.stderr[-3000:]

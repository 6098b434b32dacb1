"""A CLI run sends before Dagster is up, and its Dagster run adopts the batch (handoff.py).

Real components: the CLI in a child process, the simulator in this process (so the test
sees the first request arrive), a real Dagster instance read afterwards.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.simulator.state import SimulatorStats
from tests.support.cli_runs import RUN, simulator_env, write_batch

ROWS = 12


def _first_request_while(process: subprocess.Popen[str], stats: SimulatorStats) -> float | None:
    """The wall-clock moment the simulator first saw a request, watched until exit."""
    first = None
    while process.poll() is None:
        if first is None and stats.requests_total > 0:
            first = time.time()
        time.sleep(0.002)
    return first


def test_the_batch_is_sent_before_its_dagster_run_exists_and_the_run_adopts_it(
    tmp_path: Path,
) -> None:
    csv = write_batch(tmp_path / "kites.csv", "A box kite over dunes, study {}", ROWS)
    config = SimulatorConfig(latency_s=0.3, max_inflight=4, image_scale=0.25)
    with running_simulator(config) as sim:
        env = simulator_env(sim, tmp_path, IDEOGRAM_MAX_INFLIGHT="4")
        process = subprocess.Popen(
            [*RUN, str(csv)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        first_request = _first_request_while(process, sim.stats)
        out, err = process.communicate(timeout=120)
        assert sim.stats.billed_images == ROWS
    assert process.returncode == 0, err[-3000:]
    assert first_request is not None

    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    try:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.run_id in out  # the summary names the run that recorded the batch
        record = instance.get_run_record_by_id(run.run_id)
        assert record is not None and record.create_timestamp.timestamp() > first_request
        logs = [event.user_message for event in instance.all_logs(run.run_id)]
        # The progress the batch made before the run existed reached the run's log.
        assert any(f"{ROWS}/{ROWS} rows: stored {ROWS}" in line for line in logs), logs
        event = instance.get_latest_materialization_event(dg.AssetKey("batch_images"))
        assert event is not None and event.asset_materialization is not None
        assert event.run_id == run.run_id
        assert event.asset_materialization.metadata["run_stored"].value == ROWS
    finally:
        instance.dispose()
    con = history.connect(load_settings(env))
    run_ids = con.execute("SELECT DISTINCT run_id FROM generations").fetchall()
    con.close()
    assert run_ids == [(run.run_id[:12],)]


@pytest.mark.slow
def test_a_dagster_instance_that_cannot_open_still_lets_the_batch_finish(tmp_path: Path) -> None:
    """Requests went out before Dagster was up, so a broken instance cannot stop them
    half-way: the batch ends and is in the history; the command fails, naming the run."""
    csv = write_batch(tmp_path / "dunes.csv", "Dunes at noon, study {}", 6)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("not_a_dagster_setting: 1\n")
    with running_simulator(SimulatorConfig(latency_s=0.1, image_scale=0.25)) as sim:
        env = simulator_env(sim, tmp_path)
        done = subprocess.run([*RUN, str(csv)], env=env, capture_output=True, text=True)
        assert sim.stats.billed_images == 6
    assert done.returncode != 0
    assert "could not record run" in done.stderr and "stored 6" in done.stderr, done.stderr
    con = history.connect(load_settings(env))
    stored = con.execute("SELECT count(*) FROM generations WHERE status = 'stored'").fetchone()
    con.close()
    assert stored == (6,)

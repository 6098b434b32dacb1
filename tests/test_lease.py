"""One batch, one runner: the lease under the storage root, on a real folder and real S3.

Nothing is faked: the store is a local folder or the session's SeaweedFS server, the CLI
runs in subprocesses through Dagster, and the simulator (in this process) counts what was
billed. A dead runner is a process killed with SIGKILL; the time that passes before its
lease expires is simulated by ageing its heartbeat object.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.runs.lease import LEASE_PREFIX, BatchLeased, acquire_lease
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore, ObjectStore, open_store
from tests.conftest import make_env
from tests.support.cli_runs import RUN


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "root")
    settings: Settings = request.getfixturevalue("s3_settings")
    return open_store(settings)


def test_second_runner_refuses_naming_the_holder_until_released(store: ObjectStore) -> None:
    first = acquire_lease(store, "lanterns", "run-one")
    with pytest.raises(BatchLeased) as refused:
        acquire_lease(store, "lanterns", "run-two")
    message = str(refused.value)
    assert "run run-one" in message and f"pid {os.getpid()}" in message
    assert "nothing was sent" in message
    acquire_lease(store, "other-batch", "run-two").release()  # other batches are free
    first.release()
    second = acquire_lease(store, "lanterns", "run-two")
    assert second.generation == 2
    second.release()
    # Released generations older than the last are tidied away.
    assert sorted(i.key for i in store.list(f"{LEASE_PREFIX}/lanterns/")) == [
        f"{LEASE_PREFIX}/lanterns/00000002.heartbeat",
        f"{LEASE_PREFIX}/lanterns/00000002.json",
        f"{LEASE_PREFIX}/lanterns/00000002.released",
    ]


def test_a_silent_holder_is_taken_over_after_expiry_and_learns_it(store: ObjectStore) -> None:
    lost: list[int] = []
    # A holder that beats less often than its lease lives looks dead between beats (as a
    # frozen or partitioned runner does): it is taken over, and its next beat learns it.
    silent = acquire_lease(
        store, "lanterns", "run-silent", ttl_s=0.5, heartbeat_s=1.5, on_lost=lambda: lost.append(1)
    )
    with pytest.raises(BatchLeased):
        acquire_lease(store, "lanterns", "run-taker")
    time.sleep(0.7)
    taker = acquire_lease(store, "lanterns", "run-taker", heartbeat_s=0.2)
    assert taker.generation == 2
    with pytest.raises(BatchLeased, match="run run-taker"):
        acquire_lease(store, "lanterns", "run-third")
    deadline = time.monotonic() + 5
    while not lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lost == [1] and silent.lost
    silent.release()  # a lost lease is not released over the taker's
    with pytest.raises(BatchLeased, match="run run-taker"):
        acquire_lease(store, "lanterns", "run-third")
    taker.release()


def test_a_holder_dead_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process of this machine that no longer exists
    holder = acquire_lease(store, "lanterns", "run-gone")
    holder._stop.set()  # stands in for the dead process's lease
    key = f"{LEASE_PREFIX}/lanterns/00000001.json"
    body = json.loads(store.get_bytes(key))
    (store.path / key).write_text(json.dumps({**body, "pid": child.pid}), "utf-8")
    taker = acquire_lease(store, "lanterns", "run-next")
    assert taker.generation == 2 and taker.taken_over_from is not None
    assert taker.taken_over_from.run_id == "run-gone"
    taker.release()


def test_holder_still_beating_is_never_taken_over(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    alive = acquire_lease(store, "lanterns", "run-alive", ttl_s=0.6, heartbeat_s=0.1)
    time.sleep(1.0)  # longer than the TTL, but it beats
    with pytest.raises(BatchLeased):
        acquire_lease(store, "lanterns", "run-late")
    alive.release()


def _csv(path: Path, rows: int) -> Path:
    lines = ["prompt,seed"] + [f'"A glass whale number {n}",{n}' for n in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _env(sim: Simulator, tmp_path: Path, home: str = "home") -> dict[str, str]:
    (tmp_path / home).mkdir(exist_ok=True)
    return make_env(
        storage=str(tmp_path / "storage"),
        IDEOGRAM_API_KEY=sim.api_key,
        IDEOGRAM_BASE_URL=sim.base_url,
        IDEOGRAM_MAX_INFLIGHT="4",
        DAGSTER_HOME=str(tmp_path / home),
    )


@pytest.mark.slow
def test_two_cli_runs_of_one_batch_pay_once(tmp_path: Path) -> None:
    rows = 24
    csv = _csv(tmp_path / "whales.csv", rows)
    config = SimulatorConfig(latency_s=0.3, max_inflight=4, image_scale=0.25)
    with running_simulator(config) as sim:
        # Two Dagster instances too: the lease, not the instance, keeps them apart.
        first = subprocess.Popen(
            [*RUN, str(csv)],
            env=_env(sim, tmp_path, "home-a"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        second = subprocess.Popen(
            [*RUN, str(csv)],
            env=_env(sim, tmp_path, "home-b"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        outcomes = [p.communicate(timeout=180) for p in (first, second)]
        codes = [first.returncode, second.returncode]
        billed = sim.stats.billed_images
    assert sorted(codes)[0] == 0, outcomes
    assert billed == rows, (billed, outcomes)
    if codes[0] != 0 or codes[1] != 0:  # usually one refused (unless one ended first)
        refused = outcomes[codes.index(max(codes))][1]
        assert "is already being run by run" in refused, refused[-2000:]


@pytest.mark.slow
def test_a_killed_runners_lease_is_taken_over_after_expiry_and_resumed(tmp_path: Path) -> None:
    rows = 40  # 10 s of generation at 1 s, 4 in flight: still running once Dagster is up
    csv = _csv(tmp_path / "whales.csv", rows)
    storage = tmp_path / "storage"
    config = SimulatorConfig(latency_s=1.0, max_inflight=4, image_scale=0.25)
    with running_simulator(config) as sim:
        env = _env(sim, tmp_path)
        # The instance's tables exist before the runner and this test both open it: created
        # by two processes at once, a new SQLite instance can get two schema versions, and
        # every later run's Dagster refuses it ("more than one head").
        with dg.DagsterInstance.from_config(str(tmp_path / "home")):
            pass
        process = subprocess.Popen(
            [*RUN, str(csv)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while sim.stats.billed_images < 6:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        # The batch starts before its Dagster run exists (recorded_run.py): killed earlier,
        # it would leave no run to mark; its rows would still be resumed as below.
        with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
            while not instance.get_runs():
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
        assert sim.stats.billed_images < rows  # killed mid-batch, or the test proves nothing
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

        # The runner was on another machine (as far as this one can tell: its process
        # cannot be checked), so its lease, still fresh, refuses the batch at once.
        folder = storage / LEASE_PREFIX / "whales"
        (lease,) = folder.glob("*.json")
        body = json.loads(lease.read_text(encoding="utf-8"))
        lease.write_text(json.dumps({**body, "host": "another-machine"}), "utf-8")
        early = subprocess.run([*RUN, str(csv)], env=env, capture_output=True, text=True)
        assert early.returncode != 0
        assert "is already being run by run" in early.stderr, early.stderr[-2000:]
        assert "another-machine" in early.stderr

        # A minute later (simulated: its last heartbeat aged past the TTL) it is taken over.
        for beat in folder.glob("*.heartbeat"):
            beat.write_text(json.dumps({"at": time.time() - 3600}), encoding="utf-8")
        body = json.loads(lease.read_text(encoding="utf-8"))
        lease.write_text(json.dumps({**body, "since": body["since"] - 3600}), "utf-8")
        late = subprocess.run(
            [*RUN, str(csv)], env=env, capture_output=True, text=True, timeout=180
        )
        assert late.returncode == 0, late.stderr[-3000:]
        paid = dict(sim.stats.billed_by_prompt_seed)
    assert len(paid) == rows
    assert all(count == 1 for count in paid.values()), paid  # resumed from the ledger
    con = history.connect(load_settings(env))
    statuses = dict(con.execute("SELECT status, count(*) FROM generations GROUP BY 1").fetchall())
    con.close()
    assert set(statuses) <= {"stored", "unknown"} and sum(statuses.values()) == rows
    # The killed run is not left STARTED: the taker marked it failed.
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        runs = list(reversed(instance.get_runs()))  # oldest first
        assert [run.status for run in runs] == [
            dg.DagsterRunStatus.FAILURE,  # killed, then found dead by the taker
            dg.DagsterRunStatus.FAILURE,  # refused while the lease was fresh
            dg.DagsterRunStatus.SUCCESS,
        ]

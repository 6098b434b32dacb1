"""Kill -9 at any moment, then re-run: nothing lost, nothing paid twice, nothing orphaned.

Real processes and real faults: the batch runs through the CLI (Dagster, in a subprocess),
the simulator runs in this process so the test can watch its billing counters and send
SIGKILL at the chosen moment, and storage is a real folder. After each kill the batch is
run again to its end and the whole history is checked.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, HistoryTables
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore
from tests.support.cli_runs import RUN, run_and_kill, simulator_env, write_batch

ROWS = 24
LIMIT = 4


def _csv(path: Path) -> Path:
    return write_batch(path, "A clay figurine of animal number {}", ROWS)


def _env(sim: Simulator, tmp_path: Path, api_mode: str) -> dict[str, str]:
    return simulator_env(
        sim,
        tmp_path,
        IDEOGRAM_MAX_INFLIGHT=str(LIMIT),
        IDEOGRAM_API_MODE=api_mode,
        IDEOGRAM_FLUSH_EVERY="3",  # many small Parquet writes: kills land during them too
    )


def _parquet_files(root: Path) -> list[Path]:
    return sorted((root / "history").rglob("*.parquet"))


KILL_POINTS: dict[str, Callable[[Simulator, Path], bool]] = {
    # While requests are in flight: some generations billed, most not yet.
    "requests": lambda sim, root: sim.stats.billed_images >= 3,
    # While images are being downloaded (downloads are slowed down in this scenario).
    "downloads": lambda sim, root: sim.stats.downloads >= 5,
    # Right after metadata files start appearing.
    "metadata": lambda sim, root: len(_parquet_files(root)) >= 2,
}


@pytest.mark.parametrize("api_mode", ["async", "sync"])
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
@pytest.mark.slow
def test_kill_then_rerun_ends_consistent(tmp_path: Path, point: str, api_mode: str) -> None:
    config = SimulatorConfig(
        latency_s=0.15,
        max_inflight=LIMIT,
        image_scale=0.25,
        download_latency_s=0.1 if point == "downloads" else 0.0,
    )
    storage = tmp_path / "storage"
    csv = _csv(tmp_path / "figurines.csv")
    (tmp_path / "home").mkdir()
    with running_simulator(config) as sim:
        env = _env(sim, tmp_path, api_mode)
        killed = run_and_kill([*RUN, str(csv)], env, lambda: KILL_POINTS[point](sim, storage))
        assert killed, "the batch finished before the kill point"
        billed_at_kill = sim.stats.billed_images

        rerun = subprocess.run(
            [*RUN, str(csv), "--resend-unknown"] if api_mode == "sync" else [*RUN, str(csv)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        billed = dict(sim.stats.billed_by_prompt_seed)

    # Every row accounted for, once, with a final status.
    settings = load_settings(env)
    con = history.connect(settings)
    statuses = dict(
        con.execute(
            "SELECT \"row\", string_agg(status, ',') FROM generations GROUP BY 1"
        ).fetchall()
    )
    assert sorted(statuses) == list(range(1, ROWS + 1))
    if api_mode == "sync":
        assert set(statuses.values()) == {"stored"}, statuses  # unknown rows were resent
    else:
        # A kill between Ideogram accepting a submission and the ledger recording its id
        # (a few milliseconds) leaves the row unknown: never resent, so never paid twice.
        unknown = [row for row, status in statuses.items() if status == "unknown"]
        assert set(statuses.values()) <= {"stored", "unknown"}, statuses
        assert len(unknown) <= LIMIT

    # One current row per id; a record the audit trail holds twice (killed between its
    # append and the state's MERGE, then written again) is the same record both times.
    assert (
        con.execute("SELECT id FROM generations GROUP BY id HAVING count(*) > 1").fetchall() == []
    )
    dupes = con.execute(
        "SELECT id FROM generation_records GROUP BY id "
        "HAVING count(DISTINCT (status, attempt_id, image_key, sha256)) > 1"
    ).fetchall()
    assert dupes == []
    # Every data file a table refers to is whole (a kill mid-write can leave files that no
    # commit refers to, which vacuum removes).
    for name in (GENERATIONS, RECORDS):
        for uri in HistoryTables(settings).table(name).file_uris():
            pq.read_table(uri)  # raises on a truncated file
    # A kill mid-write can leave a dot-named temporary file; no reader ever lists it.
    listed = {info.key for info in LocalStore(storage).list("")}
    assert not any(key.endswith(".tmp") for key in listed)

    # Objects and metadata agree one to one: no orphans, no dangling rows.
    keys = {
        row[0]
        for row in con.execute(
            "SELECT image_key FROM generations WHERE image_key IS NOT NULL"
        ).fetchall()
    }
    con.close()
    objects = {p.relative_to(storage).as_posix() for p in (storage / "images").rglob("*.png")}
    assert objects == keys

    # Paid images beyond one per row: none in async mode; at most the in-flight limit
    # (requests cut off mid-flight, resent on request) in sync mode.
    extra = sum(count - 1 for count in billed.values() if count > 1)
    if api_mode == "async":
        assert extra == 0, billed
    else:
        assert extra <= LIMIT, billed
    assert billed_at_kill <= sum(billed.values())

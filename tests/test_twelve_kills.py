"""Twelve SIGKILLs across six asynchronous 120-row batches: the crash window is the round trip.

Real processes, real faults: each batch runs through the CLI (Dagster in-process, in a
subprocess) against the simulator in this process, at the account's default 10 in flight
and 0.5 s a generation (20 submissions a second, the run's busiest), is killed with
SIGKILL twice while it is paying, and is then run to its end. Three batches are killed 2 s
and 3.5 s after their run started (Dagster still importing beside the first requests),
three at random moments. A row ends ``unknown`` only when a kill lands between the
journal's append of its intent and that of its generation id. Those appends bracket the
POST in the run's submitting process (``submit_process.py``), which finishes the POSTs it
has made when the run is killed, so a kill of the run alone leaves none. At most one
``unknown`` row in all twelve kills, and no image is ever paid twice. The test prints the
windows it saw in the killed runs' journals.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from ideogram_pipeline import history
from ideogram_pipeline.runs.journal import Journal
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from tests.conftest import make_env
from tests.support.cli_runs import RUN

BATCHES = 6
ROWS = 120
LIMIT = 10
LATENCY_S = 0.5
#: Seconds after its start at which a run of the first three batches is killed.
FIXED_KILLS = (2.0, 3.5)


def _kill(cmd: list[str], env: dict[str, str], sent: Callable[[], int], at: float | None) -> bool:
    """Start ``cmd`` and SIGKILL it ``at`` seconds after its start, or, with ``at`` None,
    at a random moment within 1.5 s of its first request (uncorrelated with any answer, as
    a person's kill or a lost machine is). ``sent`` counts submissions: billing is not a
    sign of this process's spending, since the generations a killed run left behind
    complete and bill while the next run is still starting. True if the kill landed
    while the run was spending (it had sent a request and was still running)."""
    started = time.monotonic()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = sent()
    try:
        if at is not None:
            time.sleep(max(0.0, started + at - time.monotonic()))
        while at is None and sent() == start:
            if process.poll() is not None:
                return False
            assert time.monotonic() < started + 90, "the batch never sent a request"
            time.sleep(0.002)
        if at is None:
            time.sleep(random.uniform(0.0, 1.5))
        if process.poll() is not None:
            return False
        spending = sent() > start
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return spending
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _windows(journals: Path) -> dict[tuple[str, str], float]:
    """Milliseconds from each attempt's intent to its generation id, by journal file and
    attempt, from the journals the killed runs left behind (once each killed run's
    submitting process has journaled its last ids and let go)."""
    spans: dict[tuple[str, str], float] = {}
    for path in journals.rglob("*.jsonl"):
        Journal.wait_for_writers(path, timeout_s=30)
        times: dict[str, dict[str, float]] = {}
        for event in Journal.read(path):  # a line torn by the kill is skipped
            at = datetime.fromisoformat(event["at"]).timestamp()
            times.setdefault(event["attempt_id"], {})[event["event"]] = at
        for attempt, seen in times.items():
            if {"intent", "submitted"} <= seen.keys():
                spans[(path.name, attempt)] = (seen["submitted"] - seen["intent"]) * 1000
    return spans


@pytest.mark.slow
def test_twelve_kills_leave_at_most_one_unknown_row_and_nothing_paid_twice(
    tmp_path: Path,
) -> None:
    random.seed(os.getpid())
    config = SimulatorConfig(latency_s=LATENCY_S, max_inflight=LIMIT)
    unknown = 0
    kills = 0
    windows: dict[tuple[str, str], float] = {}
    with running_simulator(config) as sim:
        env = make_env(
            storage=str(tmp_path / "storage"),
            IDEOGRAM_API_KEY=sim.api_key,
            IDEOGRAM_BASE_URL=sim.base_url,
            IDEOGRAM_MAX_INFLIGHT=str(LIMIT),
            IDEOGRAM_API_MODE="async",
            DAGSTER_HOME=str(tmp_path / "home"),
        )
        (tmp_path / "home").mkdir()  # new: the first kills may land in Dagster's creating it
        for number in range(BATCHES):
            csv = tmp_path / f"batch-{number}.csv"
            lines = ["prompt,seed"] + [
                f'"Batch {number} porcelain bird {n}",{n}' for n in range(ROWS)
            ]
            csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
            for kill in range(2):  # two kills per batch, mid-spend
                at = FIXED_KILLS[kill] if number < BATCHES // 2 else None
                kills += _kill(
                    [*RUN, str(csv)], env, lambda: sum(sim.stats.requests_by_route.values()), at
                )
                windows.update(_windows(tmp_path / "storage" / "journal"))
            rerun = subprocess.run(
                [*RUN, str(csv)], env=env, capture_output=True, text=True, timeout=180
            )
            assert rerun.returncode == 0, rerun.stderr[-3000:]
        paid = dict(sim.stats.billed_by_prompt_seed)
    con = history.connect(load_settings(env))
    statuses = dict(con.execute("SELECT status, count(*) FROM generations GROUP BY 1").fetchall())
    con.close()
    unknown = statuses.get("unknown", 0)
    print(
        f"{kills} kills: {unknown} unknown row(s), {sim.stats.billed_images} images billed, "
        f"{sim.stats.rate_limited} submissions refused with 429"
    )
    spans = sorted(windows.values())
    print(
        f"intent-to-id windows in the killed runs' journals: {len(spans)}, median "
        f"{statistics.median(spans):.1f} ms, p90 {spans[int(len(spans) * 0.9)]:.1f} ms"
    )
    assert kills >= 10, kills  # a kill can come before the first request or after the end
    assert set(statuses) <= {"stored", "unknown"} and sum(statuses.values()) == BATCHES * ROWS
    assert all(count == 1 for count in paid.values()), paid  # 0 images paid twice
    assert unknown <= 1, statuses

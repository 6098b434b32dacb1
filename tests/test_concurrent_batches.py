"""One account, many runs: two batches at once share the in-flight limit.

Two real CLI processes (each a Dagster run) against one simulator whose account limit is
the configured IDEOGRAM_MAX_INFLIGHT. With IDEOGRAM_CONCURRENT_BATCHES=2 (the pool limit in
dagster.yaml) each batch takes half the limit, so together they never exceed it and the
simulator never has to answer 429; with 1 (each believing it has the whole account) the
control shows the 429s that sharing prevents.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from ideogram_pipeline import history
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.storage.base import StorageError
from ideogram_pipeline.storage.local import LocalStore
from tests.conftest import make_env
from tests.support.cli_runs import RUN

LIMIT = 4
#: Rows per batch, at LATENCY_S each: 6 s of generation per batch at the limit, longer than
#: the two processes' start-ups ever differ, so the control case (each batch alone fills
#: the account) really sends at once (with 16 rows at 0.2 s, 0.8 s each, a slow start of
#: one process let the other finish first and the control saw no 429; with 24 at 0.5 s,
#: 3 s each, one process started 5.4 s after the other on a loaded machine).
ROWS = 24
LATENCY_S = 1.0


def _batch(path: Path, name: str) -> Path:
    lines = ["prompt,seed"] + [f'"{name} poster number {n}",{n}' for n in range(ROWS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("concurrent_batches", [2, 1])
@pytest.mark.slow
def test_two_batches_share_the_account(tmp_path: Path, concurrent_batches: int) -> None:
    (tmp_path / "home").mkdir()
    config = SimulatorConfig(latency_s=LATENCY_S, max_inflight=LIMIT, image_scale=0.25)
    with running_simulator(config) as sim:
        env = make_env(
            storage=str(tmp_path / "storage"),
            IDEOGRAM_API_KEY=sim.api_key,
            IDEOGRAM_BASE_URL=sim.base_url,
            IDEOGRAM_MAX_INFLIGHT=str(LIMIT),
            IDEOGRAM_CONCURRENT_BATCHES=str(concurrent_batches),
            DAGSTER_HOME=str(tmp_path / "home"),
        )
        runs = [
            subprocess.Popen(
                [*RUN, str(_batch(tmp_path / f"{name}.csv", name))],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("alpha", "beta")
        ]
        outputs = [run.communicate(timeout=180) for run in runs]
        stats = sim.stats
    for (out, err), run in zip(outputs, runs, strict=True):
        assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{out}\nstderr:\n{err}"

    con = history.connect(load_settings(env))
    spans = con.execute(
        "SELECT batch, min(created_at), max(created_at), count(*) FILTER (status = 'stored') "
        "FROM generations GROUP BY batch ORDER BY batch"
    ).fetchall()
    con.close()
    assert [(batch, stored) for batch, _start, _end, stored in spans] == [
        ("alpha", ROWS),
        ("beta", ROWS),
    ]
    assert stats.max_images_inflight_seen <= LIMIT
    if concurrent_batches == 2:
        (_, a_start, a_end, _), (_, b_start, b_end, _) = spans
        assert a_start < b_end and b_start < a_end  # the two batches really overlapped
        assert stats.rate_limited == 0
    else:
        # Each batch alone fills the account: 429s (retried), which only sending at the
        # same time can cause. Their stored spans need not overlap: the batch that got the
        # slots first can keep them, and the other's retries get in only after it.
        assert stats.rate_limited > 0


def test_runs_starting_together_each_prove_the_root(tmp_path: Path) -> None:
    """Each run's preflight writes, reads back and deletes a probe of its own: with one
    shared probe name a run starting beside another read "no object at .preflight/probe"
    (the other had deleted it) and failed before sending anything (seen in CI)."""
    errors: list[Exception] = []

    def prove_root_repeatedly() -> None:
        store = LocalStore(tmp_path / "storage")
        for _ in range(200):
            try:
                store.preflight()
            except StorageError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=prove_root_repeatedly) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert list((tmp_path / "storage" / ".preflight").iterdir()) == []

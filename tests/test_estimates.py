"""Estimates are what the run will pay (issue 17, point 5).

After a kill, a resume collects what the ledger holds (answers, generation ids) without
paying again, reports requests sent without an answer as ``unknown`` rather than resend
them, and links identical seeded rows: ``--dry-run`` and ``--max-cost`` price only the rows
it will send. Real processes and real faults, as in ``test_crash_recovery.py``: the batch
runs through the CLI in a subprocess, the simulator in this process (its billing counters
are the truth), SIGKILL when some generations are billed.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import load_batch
from ideogram_pipeline.cli import main
from ideogram_pipeline.ideogram.prices import request_price
from ideogram_pipeline.runs.cost_guard import estimate_cost
from ideogram_pipeline.runs.row_matching import match_rows
from ideogram_pipeline.runs.runner import estimate_batch
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.storage import open_store
from tests.support.cli_runs import RUN, run_and_kill, simulator_env

ROWS = 24


def _write(path: Path, order: list[int]) -> Path:
    lines = ["prompt,seed"] + [f'"A glass marble holding planet number {n}",{n}' for n in order]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _price(csv: Path) -> float:
    return request_price(load_batch(csv).requests[0])


@pytest.mark.parametrize("api_mode", ["async", "sync"])
@pytest.mark.slow
def test_dry_run_after_a_kill_is_what_the_resume_pays(tmp_path: Path, api_mode: str) -> None:
    csv = _write(tmp_path / "marbles.csv", list(range(ROWS)))
    (tmp_path / "home").mkdir()
    config = SimulatorConfig(latency_s=0.3, max_inflight=4, image_scale=0.25)
    with running_simulator(config) as sim:
        env = simulator_env(
            sim,
            tmp_path,
            IDEOGRAM_MAX_INFLIGHT="4",
            IDEOGRAM_API_MODE=api_mode,
            IDEOGRAM_FLUSH_EVERY="3",
        )
        killed = run_and_kill([*RUN, str(csv)], env, lambda: sim.stats.billed_images >= 6)
        assert killed, "the batch finished before the kill"
        settings = load_settings(env)
        batch = load_batch(csv, key="marbles")
        # What the estimate said before issue 17: every row not yet recorded.
        matched = match_rows(settings, open_store(settings), batch, write=False)
        naive = estimate_cost(batch, matched.previous)
        estimate = estimate_batch(batch, settings)
        # The CLI's dry run says the same, and --max-cost at that figure lets it run.
        dry = CliRunner(env=env).invoke(main, ["run", str(csv), "--dry-run"])
        assert dry.exit_code == 0, dry.output
        shown = re.search(r"estimated cost\s+\$(\d+\.\d+)", dry.output)
        assert shown is not None, dry.output
        assert float(shown[1]) == pytest.approx(round(estimate.usd, 2))
        before = sim.stats.billed_images
        budget = f"{estimate.usd + _price(csv) / 2:.4f}"
        resumed = subprocess.run(
            [*RUN, str(csv), "--max-cost", budget], env=env, capture_output=True, text=True
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        paid_usd = (sim.stats.billed_images - before) * _price(csv)
    print(
        f"\n[{api_mode}] old estimate ${naive.usd:.2f}; estimate "
        f"${estimate.usd:.2f} ({estimate.rows_to_send} rows, {estimate.rows_recovered} "
        f"recovered, {estimate.rows_unknown} unknown); resume paid ${paid_usd:.2f}"
    )
    assert abs(estimate.usd - paid_usd) <= _price(csv) + 1e-9


@pytest.mark.parametrize("api_mode", ["async", "sync"])
@pytest.mark.slow
def test_a_killed_batch_reordered_then_resumed_pays_each_row_once(
    tmp_path: Path, api_mode: str
) -> None:
    """The kill leaves ledger entries (and journal lines) filed under the old lines: the
    resume finds them under the rows' new lines, collects what was paid and leaves rows
    sent without an answer ``unknown`` on their new lines, never sending a row twice."""
    csv = _write(tmp_path / "marbles.csv", list(range(ROWS)))
    (tmp_path / "home").mkdir()
    config = SimulatorConfig(latency_s=0.3, max_inflight=4, image_scale=0.25)
    with running_simulator(config) as sim:
        env = simulator_env(
            sim,
            tmp_path,
            IDEOGRAM_MAX_INFLIGHT="4",
            IDEOGRAM_API_MODE=api_mode,
            IDEOGRAM_FLUSH_EVERY="3",
        )
        killed = run_and_kill([*RUN, str(csv)], env, lambda: sim.stats.billed_images >= 6)
        assert killed, "the batch finished before the kill"
        # The person reverses the file and runs it again.
        _write(csv, list(reversed(range(ROWS))))
        resumed = subprocess.run([*RUN, str(csv)], env=env, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        billed = dict(sim.stats.billed_by_prompt_seed)
    assert max(billed.values()) == 1, billed
    settings = load_settings(env)
    con = history.connect(settings, file_rows_only=True)
    try:
        rows = con.execute(
            "SELECT \"row\", prompt, string_agg(status, ',') FROM generations GROUP BY ALL "
            'ORDER BY "row"'
        ).fetchall()
        errors = con.execute(
            'SELECT "row", error FROM generations WHERE error IS NOT NULL'
        ).fetchall()
    finally:
        con.close()
    # Every row of the reversed file, on its new line; a kill between Ideogram accepting a
    # submission and the journal recording its id leaves a row unknown, never paid twice.
    assert [(line, prompt) for line, prompt, _ in rows] == [
        (line, f"A glass marble holding planet number {n}")
        for line, n in enumerate(reversed(range(ROWS)), start=1)
    ]
    statuses = Counter(status for _, _, status in rows)
    print(
        f"\n[{api_mode}] reordered resume: {dict(statuses)}, images billed {sum(billed.values())}"
    )
    assert set(statuses) <= {"stored", "unknown"}, errors

"""A simulated image never counts as a real one.

Nothing is faked: a simulator started on its own on loopback plays both parts. Addressed
with ``IDEOGRAM_SIMULATOR=1`` it is "the simulator" (its records are marked simulated);
addressed with ``IDEOGRAM_BASE_URL`` and a key it is "the real API" (as every other test
uses it), so a run that regenerates the rows proves that simulated records were not
counted as done. Batches run through the engine into a real local root; the commands that
list records run through the real CLI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ideogram_pipeline.batches.files import load_batch
from ideogram_pipeline.cli import main
from ideogram_pipeline.runs.runner import execute_batch
from ideogram_pipeline.runs.summary import BatchSummary
from ideogram_pipeline.settings import SettingsError, load_settings
from ideogram_pipeline.simulator.server import Simulator
from tests.lifecycle_support import Root, run_cli, simulator_running

ROWS = [
    ("A red fox in fresh snow", "", ""),
    ("A cat asleep on a piano", "", "42"),  # explicit seed: linkable across batches
    ("Two paper boats on a pond", "", ""),
]
HEADER = "prompt,tags,seed"


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with simulator_running() as sim:
        yield sim


def _roots(tmp_path: Path, simulator: Simulator) -> tuple[Root, Root]:
    """The same storage root, seen through the simulator and through "the real API"."""
    base = {"IDEOGRAM_STORAGE": str(tmp_path / "root"), "IDEOGRAM_BASE_URL": simulator.base_url}
    simulated = Root({**base, "IDEOGRAM_SIMULATOR": "1"}, tmp_path)
    real = Root({**base, "IDEOGRAM_API_KEY": simulator.api_key}, tmp_path)
    return simulated, real


def _dry_run(root: Root, key: str, rows: list[tuple[str, str, str]]) -> BatchSummary:
    csv = root.tmp / f"{key}-dry.csv"
    lines = [HEADER] + [",".join(f'"{cell}"' for cell in row) for row in rows]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return execute_batch(load_batch(csv, key=key), root.settings, store=root.store, dry_run=True)


def test_a_base_url_without_a_key_is_refused_before_anything_runs(
    tmp_path: Path, simulator: Simulator
) -> None:
    with pytest.raises(SettingsError, match="IDEOGRAM_BASE_URL is set but IDEOGRAM_API_KEY"):
        load_settings({"IDEOGRAM_BASE_URL": simulator.base_url})
    with pytest.raises(SettingsError, match="IDEOGRAM_SIMULATOR must be"):
        load_settings({"IDEOGRAM_SIMULATOR": "maybe"})
    assert load_settings({}).simulated  # no base URL, no key: the bundled simulator
    explicit = load_settings({"IDEOGRAM_BASE_URL": simulator.base_url, "IDEOGRAM_SIMULATOR": "1"})
    assert explicit.simulated and explicit.simulator_at_base_url
    assert "SIMULATED" in explicit.api_label

    csv = tmp_path / "b.csv"
    csv.write_text("prompt\nA lighthouse at dawn\n", encoding="utf-8")
    root = tmp_path / "root"
    cleared: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("IDEOGRAM_", "AWS_"))
    }
    env = {
        **cleared,
        "IDEOGRAM_BASE_URL": simulator.base_url,
        "IDEOGRAM_STORAGE": str(root),
        "DAGSTER_HOME": str(tmp_path),
    }
    before = simulator.stats.requests_total
    for args in (["run", str(csv)], ["run", str(csv), "--dry-run"], ["query", "SELECT 1"]):
        done = CliRunner().invoke(main, args, env=env)
        assert done.exit_code != 0, (args, done.output)
        assert "IDEOGRAM_SIMULATOR=1" in done.output, done.output
    assert simulator.stats.requests_total == before  # nothing was sent
    assert not root.exists()  # nothing was written


def test_simulated_rows_are_generated_again_by_a_real_run(
    tmp_path: Path, simulator: Simulator
) -> None:
    simulated, real = _roots(tmp_path, simulator)
    first = simulated.batch("spring", ROWS, header=HEADER)
    assert first.simulated and first.stored == 3
    assert simulated.query("SELECT bool_and(simulated) FROM generations") == [(True,)]
    sim_ids = simulated.current_ids()

    # Every listing says so: search (table and JSON), inspect, export.
    found = run_cli(simulated, ["search", "fox"])
    assert found.returncode == 0 and "SIMULATED" in found.stdout, found
    as_json = json.loads(run_cli(simulated, ["search", "--format", "json"]).stdout)
    assert [row["simulated"] for row in as_json] == [True, True, True]
    fox = next(row["id"] for row in as_json if "fox" in row["prompt"])
    inspected = run_cli(simulated, ["inspect", fox[:8]])
    assert inspected.returncode == 0 and inspected.stdout.startswith("SIMULATED"), inspected
    exported = run_cli(simulated, ["export", "--where", "true", "--to", str(tmp_path / "out")])
    assert exported.returncode == 0, exported
    assert "simulated" in (tmp_path / "out" / "metadata.csv").read_text().splitlines()[0]

    # A simulated run again: the simulated images are done for it.
    again = simulated.batch("spring", ROWS, header=HEADER)
    assert again.skipped == 3 and again.stored == 0

    # The real API: every row generated again (none skipped, the seeded one not linked to
    # a simulated image in another batch either), and the summary says why.
    simulated.batch("other", [ROWS[1]], header=HEADER)
    billed = simulator.stats.billed_images
    estimate = _dry_run(real, "spring", ROWS)
    assert estimate.skipped == 0 and estimate.simulated_rows_redone == 3
    redone = real.batch("spring", ROWS, header=HEADER)
    assert not redone.simulated
    assert (redone.stored, redone.skipped, redone.linked) == (3, 0, 0)
    assert redone.simulated_rows_redone == 3
    assert redone.as_dict()["simulated_rows_redone"] == 3
    assert simulator.stats.billed_images == billed + 3
    assert real.query(
        "SELECT count(*), bool_or(simulated) FROM generations WHERE batch = 'spring'"
    ) == [(3, False)]
    assert not (real.current_ids("batch = 'spring'") & sim_ids)
    assert sim_ids <= real.ids()  # the simulated records stay in the audit trail
    listed = run_cli(real, ["search", "--batch", "spring"])
    assert "SIMULATED" not in listed.stdout

    # Real images are done for everyone, and a seeded real image may be linked.
    assert real.batch("spring", ROWS, header=HEADER).skipped == 3
    assert simulated.batch("spring", ROWS, header=HEADER).skipped == 3
    linked = real.batch("later", [ROWS[1]], header=HEADER)
    assert linked.linked == 1 and simulator.stats.billed_images == billed + 3

"""``unknown`` rows as a task of their own: listed with when they left and what a resend costs.

Real components: the simulator answers one row too slowly for the client's timeout in
synchronous mode, so that row's answer is lost after the request left (``unknown``, as a
dropped connection leaves it), the history is a real Delta table in a folder, and the
CLI is driven through click's runner against that folder.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import load_batch
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.ideogram.prices import price_per_image
from ideogram_pipeline.runs.engine import BatchSummary, run_batch
from ideogram_pipeline.runs.unknown_rows import find_unknown
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore


@pytest.fixture
def root_with_unknown(tmp_path: Path) -> tuple[Path, Path]:
    """A storage root whose batch ``lemons`` has row 1 unknown and row 2 stored."""
    root = tmp_path / "root"
    csv = tmp_path / "lemons.csv"
    csv.write_text(
        'prompt,seed\n"A quiet library at night [sim:slow]",1\n"A bowl of lemons",2\n', "utf-8"
    )
    batch = load_batch(csv, key="lemons")
    settings = load_settings({"IDEOGRAM_STORAGE": str(root)})
    store = LocalStore(root)
    with running_simulator(SimulatorConfig(image_scale=0.25, slow_latency_s=1.5)) as sim:

        async def go() -> BatchSummary:
            async with IdeogramClient(sim.base_url, sim.api_key, generate_timeout_s=0.5) as client:
                return await run_batch(
                    batch,
                    client,
                    store,
                    api_mode="sync",
                    history=HistoryTables(settings),
                )

        summary = asyncio.run(go())
        time.sleep(1.6)  # the abandoned request finishes (and is billed) on the server
    assert summary.unknown == 1 and summary.stored == 1
    return root, csv


def test_unknown_rows_are_listed_with_sent_time_and_resend_cost(
    root_with_unknown: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _csv = root_with_unknown
    started = time.time()
    con = history.connect(load_settings({"IDEOGRAM_STORAGE": str(root)}))
    rows = find_unknown(con, "lemons")
    assert find_unknown(con, "other") == []
    con.close()
    assert [(r.batch, r.row) for r in rows] == [("lemons", 1)]
    assert rows[0].sent_at is not None and abs(rows[0].sent_at.timestamp() - started) < 120
    assert rows[0].resend_usd == pytest.approx(price_per_image("V_3", None))

    monkeypatch.setenv("IDEOGRAM_STORAGE", str(root))
    result = CliRunner().invoke(main, ["unknown", "--batch", "lemons"])
    assert result.exit_code == 0, result.output
    assert "lemons" in result.output and "quiet library" in result.output
    assert "1 row(s) possibly billed; resending them would cost $" in result.output
    as_json = CliRunner().invoke(main, ["unknown", "--format", "json"])
    assert '"row": 1' in as_json.output and '"sent_at": "' in as_json.output
    none = CliRunner().invoke(main, ["unknown", "--batch", "nothing-here"])
    assert none.exit_code == 0 and "(no unknown rows)" in none.output


def test_resend_unknown_prints_the_cost_first_and_respects_max_cost(
    root_with_unknown: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root, csv = root_with_unknown
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    result = CliRunner().invoke(main, ["run", str(csv), "--resend-unknown", "--max-cost", "0.01"])
    assert result.exit_code != 0
    assert "resending 1 unknown row(s) that may have been billed already: $" in result.output
    assert "refused before sending anything" in result.output


def test_the_usage_report_counts_unknown_rows_apart_as_possibly_billed(
    root_with_unknown: tuple[Path, Path],
) -> None:
    """The report never folds a maybe-billed row into ``cost_usd``, nor hides it."""
    from ideogram_pipeline.reports.rendering import report_markdown
    from ideogram_pipeline.reports.usage import build_report

    root, _csv = root_with_unknown
    report = build_report(load_settings({"IDEOGRAM_STORAGE": str(root)}), LocalStore(root))
    assert report.totals["possibly_billed"] == 1 and report.totals["stored"] == 1
    assert report.totals["cost_usd"] == pytest.approx(price_per_image("V_3", None))
    assert "**Possibly billed:** 1 records ended `unknown`" in report_markdown(report)


def test_a_run_leaving_unknown_rows_says_so_in_metadata_summary_and_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash left row 1's intent in the ledger with no answer: the run through Dagster
    leaves it ``unknown``, and every place that counts rows says "possibly billed"."""
    import dagster as dg

    from ideogram_pipeline.runs.ledger import Ledger, new_attempt_id

    root = tmp_path / "root"
    csv = tmp_path / "plums.csv"
    csv.write_text('prompt,seed\n"A plum on a plate",1\n"A pear on a plate",2\n', "utf-8")
    batch = load_batch(csv, key="plums")
    # No journal: the intent goes straight to the store, as a killed run's replica would.
    Ledger(LocalStore(root), batch.key).journal_event(
        batch.rows[0], new_attempt_id(), "intent", mode="async"
    )
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        for name, value in {
            "IDEOGRAM_API_KEY": sim.api_key,
            "IDEOGRAM_BASE_URL": sim.base_url,
            "IDEOGRAM_STORAGE": str(root),
            "DAGSTER_HOME": str(tmp_path / "home"),
        }.items():
            monkeypatch.setenv(name, value)
        (tmp_path / "home").mkdir()
        result = CliRunner().invoke(main, ["run", str(csv), "--batch", "plums"])
        billed = sim.stats.billed_images
    assert billed == 1  # the pear only: the plum may already be paid for
    assert "possibly billed" in result.output and "1 (status unknown)" in result.output
    last = result.output.strip().splitlines()[-1]
    assert "1 row(s) possibly billed" in last and "ideogram-pipeline unknown" in last, last
    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("batch_images"))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    assert metadata["run_unknown_possibly_billed"].value == 1
    assert metadata["batch_unknown_possibly_billed"].value == 1

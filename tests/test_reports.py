"""Usage and cost reports: every figure checked against SQL written here, independently.

Real batches against the bundled simulator (several models, speeds, styles and statuses),
tag and pin changes (audit records that must never count as usage), a real retention
cleanup so that part of the usage survives only in the roll-up table, the real ``report``
command, and a plain DuckDB over the Delta tables (``delta_scan``) for the expected figures.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from ideogram_pipeline.history.duckdb_s3 import load_extension
from ideogram_pipeline.history.pins import set_pinned
from ideogram_pipeline.history.tables import RECORDS, USAGE, HistoryTables
from ideogram_pipeline.lifecycle.policy import RetentionPolicy
from ideogram_pipeline.lifecycle.retention import run_cleanup
from ideogram_pipeline.reports.rendering import report_csv, report_markdown
from ideogram_pipeline.reports.usage import build_report
from ideogram_pipeline.simulator.server import Simulator
from tests.lifecycle_support import Root, make_root, run_cli, simulator_running

HEADER = "prompt,tags,model,rendering_speed,style_type,seed"
SPRING = [
    ("A tulip field at dawn", "draft", "", "TURBO", "REALISTIC", ""),
    ("A daffodil in rain", "", "", "QUALITY", "", ""),
    ("A watercolour harbour", "", "V_2_TURBO", "", "", "7"),
    ("A poster [sim:unsafe]", "draft", "", "", "", ""),
    ("A crowded market [sim:422]", "", "", "", "", ""),
    ("An owl", "", "", "", "", "99999999999"),  # rejected: seed out of range
]
SUMMER = [
    ("A beach at noon", "", "V_2A", "", "", ""),
    ("An ice cream cone", "draft", "", "FLASH", "DESIGN", ""),
]


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with simulator_running() as sim:
        yield sim


def _expected(root: Root, sql: str) -> list[tuple]:
    """SQL over the tables as any DuckDB client reads them: each id's newest ``generate``
    record (the same id written again is one billed image), plus the roll-up rows of ids
    whose records are gone."""
    tables = HistoryTables(root.settings)
    records, rolled = (f"delta_scan('{tables.uri(name)}')" for name in (RECORDS, USAGE))
    columns = "id, model, rendering_speed, style_type, batch, status, cost_usd, latency_ms"
    live = (
        f"SELECT DISTINCT ON (id) {columns} FROM {records} "
        "WHERE event = 'generate' ORDER BY id, recorded_at DESC"
    )
    con = duckdb.connect()
    try:
        load_extension(con, "delta")
        if tables.exists(USAGE):
            live = (
                f"({live}) UNION ALL SELECT {columns} FROM {rolled} "
                f"WHERE id NOT IN (SELECT id FROM {records})"
            )
        con.execute(f"CREATE VIEW u AS {live}")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _figures(text: str) -> dict[tuple[str, str, str], str]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return {(r["section"], r["key"], r["metric"]): r["value"] for r in rows}


@pytest.mark.slow
def test_report_figures_equal_independent_sql(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root("local", tmp_path, simulator, request)
    root.batch("spring", SPRING, header=HEADER)
    root.batch("summer", SUMMER, header=HEADER)
    # Tag and pin changes append records; they are no new usage, before or after cleanup.
    (tulip,) = root.ids("prompt = 'A tulip field at dawn'")
    (beach,) = root.ids("prompt = 'A beach at noon'")
    assert run_cli(root, ["tag", tulip, "--add", "spring"]).returncode == 0
    set_pinned(root.settings, [beach], True)
    # Drafts go; their usage must still be in the report, counted once, as before.
    summary = ("records", "images", "stored", "unsafe", "rejected", "failed", "cost_usd")
    before = {k: build_report(root.settings, root.store).totals[k] for k in summary}
    policy = RetentionPolicy(default_days=30, tag_days={"draft": 7})
    gone = run_cleanup(
        root.settings, root.store, policy, datetime.now(UTC) + timedelta(days=10)
    ).plan.count
    assert gone == 3
    after = {k: build_report(root.settings, root.store).totals[k] for k in summary}
    assert after == pytest.approx(before)

    today = datetime.now(UTC).date().isoformat()
    out = tmp_path / "out"
    result = run_cli(
        root,
        ["report", "--since", today, "--until", today, "--out", str(out)],
        {"IDEOGRAM_MONTHLY_BUDGET_USD": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert "budget" in result.stdout and "report:" in result.stdout
    figures = _figures((out / "figures.csv").read_text(encoding="utf-8"))

    def value(section: str, key: str, metric: str) -> float:
        return float(figures[(section, key, metric)])

    (records, cost, images) = _expected(
        root,
        "SELECT count(*), sum(cost_usd), count(*) FILTER (status IN ('stored','unsafe')) FROM u",
    )[0]
    assert records == len(SPRING) + len(SUMMER)  # one image per row, deleted ones included
    assert value("summary", "all", "records") == records
    assert value("summary", "all", "images") == images
    assert value("summary", "all", "cost_usd") == pytest.approx(cost)
    for status, count in _expected(root, "SELECT status, count(*) FROM u GROUP BY ALL"):
        assert value("summary", "all", status) == count
        assert value("status_mix", status, "records") == count
    for model, count, spend in _expected(
        root, "SELECT model, count(*), sum(cost_usd) FROM u WHERE model IS NOT NULL GROUP BY ALL"
    ):
        assert value("by_model", model, "records") == count
        assert value("by_model", model, "cost_usd") == pytest.approx(spend)
    for speed, count in _expected(
        root, "SELECT rendering_speed, count(*) FROM u WHERE rendering_speed IS NOT NULL GROUP BY 1"
    ):
        assert value("by_rendering_speed", speed, "records") == count
    for style, spend in _expected(
        root, "SELECT style_type, sum(cost_usd) FROM u WHERE style_type IS NOT NULL GROUP BY 1"
    ):
        assert value("by_style", style, "cost_usd") == pytest.approx(spend)
    for batch, count in _expected(root, "SELECT batch, count(*) FROM u GROUP BY 1"):
        assert value("by_batch", batch, "records") == count
    avg, p95 = _expected(root, "SELECT avg(latency_ms), quantile_cont(latency_ms, 0.95) FROM u")[0]
    assert value("latency", "all models", "avg_ms") == pytest.approx(avg)
    assert value("latency", "all models", "p95_ms") == pytest.approx(p95)
    month = today[:7]
    assert value("budget", month, "spend_usd") == pytest.approx(cost)
    assert value("budget", month, "budget_usd") == 2
    assert value("budget", month, "remaining_usd") == pytest.approx(2 - cost)
    assert value("by_day", today, "cost_usd") == pytest.approx(cost)
    tables = HistoryTables(root.settings)
    bytes_deleted = root.query(
        f"SELECT sum(size_bytes) FROM delta_scan('{tables.uri(USAGE)}') WHERE status = 'stored'"
    )[0][0]
    assert bytes_deleted  # the tulip went, and its image
    assert value("storage", "all", "image_bytes_deleted_in_window") == bytes_deleted
    retained = root.query(
        "SELECT sum(size_bytes) FROM generations WHERE status = 'stored'"
    )  # no record was superseded here: the current rows hold every image
    assert value("storage", "all", "image_bytes_retained") == retained[0][0]
    errors = {figures[("top_errors", str(n), "reason")] for n in (1, 2, 3)}
    assert any("safety check" in e for e in errors) and any("seed" in e for e in errors)

    # The same files in the storage root, with the charts the Markdown links to.
    folder = f"reports/{today}--{today}"
    stored = root.objects(folder)
    names = {key.rsplit("/", 1)[1] for key in stored}
    assert names == {"report.md", "figures.csv", "cost_per_day.png", "images_per_day.png"}
    markdown = root.store.get_bytes(f"{folder}/report.md").decode("utf-8")
    assert "![Cost per day by model](cost_per_day.png)" in markdown
    assert "![Images per day by status](images_per_day.png)" in markdown
    assert root.store.get_bytes(f"{folder}/cost_per_day.png").startswith(b"\x89PNG")
    assert (out / "report.md").read_text(encoding="utf-8") == markdown


def test_report_text_is_neutralised_for_spreadsheets_and_markdown(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    """Keys come from data people and APIs write: a formula or a pipe must stay text."""
    root = make_root("local", tmp_path, simulator, request)
    root.batch("plain", SUMMER, header=HEADER)
    data = build_report(root.settings, root.store)
    data.top_errors.loc[len(data.top_errors)] = ["failed", "=HYPERLINK(1)|<b>", 1]
    text = report_csv(data)
    assert "'=HYPERLINK(1)|<b>" in text and ",=HYPERLINK" not in text
    markdown = report_markdown(data)
    assert "=HYPERLINK(1)\\|&lt;b&gt;" in markdown


def test_report_on_an_empty_root_and_bad_dates(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root("local", tmp_path, simulator, request)
    empty = run_cli(root, ["report"])
    assert empty.returncode == 0, empty.stderr
    assert "0 records" in empty.stdout
    backwards = run_cli(root, ["report", "--since", "2025-02-01", "--until", "2025-01-01"])
    assert backwards.returncode != 0 and "after" in backwards.stderr
    bad = run_cli(root, ["report", "--since", "yesterday"])
    assert bad.returncode != 0

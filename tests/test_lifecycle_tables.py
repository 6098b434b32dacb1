"""The lifecycle on a history an earlier release wrote: refused until migrated, then whole.

The root is a copy of ``tests/data/legacy-history/`` (written by release 2314ac4 itself:
Hive Parquet, a pin log, a usage roll-up and the audit of a finished cleanup). Before
``migrate`` every lifecycle command must say so and fail; after it, a cleanup deletes
what expired, and the report counts every record, the old roll-up's and the new one's,
exactly once.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ideogram_pipeline.lifecycle.policy import RetentionPolicy
from ideogram_pipeline.lifecycle.retention import AUDIT_PREFIX, run_cleanup
from ideogram_pipeline.reports.usage import build_report
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store
from tests.lifecycle_support import Root, run_cli

DATA = Path(__file__).parent / "data"
EXPECTED: dict[str, Any] = json.loads((DATA / "legacy-history.json").read_text())
SUMMARY = ("records", "images", "stored", "unsafe", "rejected", "failed", "cost_usd")


@pytest.fixture
def legacy(tmp_path: Path) -> Root:
    shutil.copytree(DATA / "legacy-history", tmp_path / "root")
    (tmp_path / "retention.toml").write_text("[retention]\ndefault_days = 30\n")
    return Root(
        {
            "IDEOGRAM_STORAGE": str(tmp_path / "root"),
            "IDEOGRAM_RETENTION": str(tmp_path / "retention.toml"),
        },
        tmp_path,
    )


def _totals(root: Root) -> dict[str, Any]:
    report = build_report(root.settings, root.store)
    return {key: report.totals[key] for key in SUMMARY}


def test_lifecycle_commands_refuse_an_unmigrated_history(legacy: Root) -> None:
    before = legacy.objects()
    for args in (
        ["cleanup", "--dry-run"],
        ["cleanup"],
        ["cleanup", "--orphans"],
        ["compact"],
        ["report"],
    ):
        result = run_cli(legacy, args)
        assert result.returncode != 0 and "migrate" in result.stderr, (args, result)
    assert legacy.objects() == before  # not even an empty table or an audit


def test_after_migration_cleanup_and_reports_count_everything_once(legacy: Root) -> None:
    migrated = run_cli(legacy, ["migrate"])
    assert migrated.returncode == 0, migrated.stderr
    records = sum(b["records"] for b in EXPECTED["generation_records"].values())
    rolled = len(EXPECTED["usage_rollup"])
    cost = sum(b["cost_usd"] for b in EXPECTED["generation_records"].values())
    cost += sum(r["cost_usd"] for r in EXPECTED["usage_rollup"])
    totals = _totals(legacy)
    assert totals["records"] == records + rolled
    assert totals["cost_usd"] == pytest.approx(cost)

    # A year on everything goes but the pinned record (the pin log became the column).
    later = datetime.now(UTC) + timedelta(days=365)
    settings = load_settings(legacy.env)
    result = run_cleanup(settings, open_store(settings), RetentionPolicy(30), later)
    assert result.resumed == []  # the old roll-up's cleanup has its audit: nothing to redo
    assert legacy.current_ids() == set(EXPECTED["pinned"]) == legacy.ids()
    assert _totals(legacy) == pytest.approx(totals)
    audits = [k for k in legacy.objects(AUDIT_PREFIX + "/") if k.endswith(".json")]
    assert len(audits) == 2

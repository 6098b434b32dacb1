"""The lifecycle in Dagster: schedules, their jobs run in a real instance, asset checks.

Real Dagster throughout (a temporary SQLite instance), the code location's own
``defs``, real batches against the bundled simulator for the history, a local root.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ideogram_pipeline.definitions import defs
from ideogram_pipeline.defs.lifecycle.schedules import ScheduleTimes, build_lifecycle_schedules
from ideogram_pipeline.history import health as history_health
from ideogram_pipeline.history.tables import GENERATIONS, HistoryTables
from ideogram_pipeline.history.views import read_rows
from ideogram_pipeline.simulator.server import Simulator
from tests.lifecycle_support import Root, make_root, simulator_running

SCHEDULES = {
    "retention_cleanup_schedule": "retention_cleanup_job",
    "metadata_compaction_schedule": "metadata_compaction_job",
    "usage_report_schedule": "usage_report_job",
}


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with simulator_running() as sim:
        yield sim


@pytest.fixture
def root(
    tmp_path: Path,
    simulator: Simulator,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> Root:
    config = "[retention]\ndefault_days = 30\n[retention.tags]\ndraft = 7\n"
    root = make_root("local", tmp_path, simulator, request, retention=config)
    for name in ("AWS_ENDPOINT_URL", "IDEOGRAM_MONTHLY_BUDGET_USD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in root.env.items():
        monkeypatch.setenv(name, value)  # the resources read the environment at run time
    return root


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        yield instance


def _metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node(node)
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def _op_metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, Any]:
    """What a maintenance op reported: its output's metadata (it materializes nothing)."""
    assert result.asset_materializations_for_node(node) == []
    (output,) = [e for e in result.events_for_node(node) if e.is_successful_output]
    return {k: getattr(v, "value", v) for k, v in output.step_output_data.metadata.items()}


def test_schedules_are_defined_with_configurable_crons(caplog: pytest.LogCaptureFixture) -> None:
    repo = defs.get_repository_def()
    schedules = {s.name: s for s in repo.schedule_defs}
    assert {name: s.job_name for name, s in schedules.items()} == SCHEDULES
    assert schedules["retention_cleanup_schedule"].cron_schedule == "0 3 * * *"
    assert all(s.execution_timezone == "UTC" for s in schedules.values())
    custom = build_lifecycle_schedules(
        ScheduleTimes.from_env(
            {"IDEOGRAM_CLEANUP_CRON": "15 1 * * 0", "IDEOGRAM_REPORT_CRON": "every day"}
        )
    )
    crons = {s.name: s.cron_schedule for s in custom}
    assert crons == {
        "retention_cleanup_schedule": "15 1 * * 0",
        "metadata_compaction_schedule": "30 3 * * *",
        "usage_report_schedule": "0 6 * * *",  # not a cron: the default, and a warning
    }
    assert "IDEOGRAM_REPORT_CRON='every day' is not a five-field cron" in caplog.text


def test_maintenance_runs_as_ops_not_assets() -> None:
    """Cleanup and compaction change the history in place: jobs of ops, no asset keys."""
    keys = {k.to_user_string() for k in defs.get_repository_def().asset_graph.get_all_asset_keys()}
    assert not keys & {"retention_cleanup", "metadata_compaction"}
    for job_name, op_name in [
        ("retention_cleanup_job", "retention_cleanup"),
        ("metadata_compaction_job", "metadata_compaction"),
    ]:
        job = defs.resolve_job_def(job_name)
        assert [node.name for node in job.graph.nodes] == [op_name]
        assert not job.asset_layer.has(dg.AssetKey(op_name))


@pytest.mark.slow
def test_scheduled_jobs_run_through_dagster(root: Root, instance: dg.DagsterInstance) -> None:
    root.batch("nightly", [("A draft sketch", "draft"), ("A final painting", "")])
    for number in range(2):  # a second file in the partition for compaction to merge
        root.batch("nightly", [(f"An extra print {number}", "")])
    repo = defs.get_repository_def()
    results = {}
    for schedule in repo.schedule_defs:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime.now(UTC)
        )
        (run_request,) = schedule.evaluate_tick(context).run_requests or []
        job = defs.resolve_job_def(schedule.job_name)
        results[schedule.name] = job.execute_in_process(
            instance=instance, run_config=run_request.run_config, tags=run_request.tags
        )
        assert results[schedule.name].success

    # Today nothing is old enough: the scheduled cleanup deletes nothing, and says so.
    cleanup = _op_metadata(results["retention_cleanup_schedule"], "retention_cleanup")
    assert cleanup["records_deleted"] == 0 and cleanup["audit"]
    compaction = _op_metadata(results["metadata_compaction_schedule"], "metadata_compaction")
    assert compaction["files_before"] > compaction["files_after"] >= 1
    report = _metadata(results["usage_report_schedule"], "usage_report")
    assert report["records"] == 4 and "data:image/png;base64," in report["report_markdown"]
    history = _metadata(results["usage_report_schedule"], "generation_history")
    assert history["records"] == 4  # every record of the three files
    assert history["record_versions"] == 4  # no tag or pin changes: one version each
    # Rows are known by their content (issue 17): the rows the later files left stay
    # current, with their images (in_file false), so all 4 are current rows.
    assert history["current_rows"] == 4 and history["by_status"] == {"stored": 4}
    assert history["metadata_files"] >= 2
    checks = results["usage_report_schedule"].get_asset_check_evaluations()
    assert len(checks) == 4 and all(c.passed for c in checks)

    # Ten days on, the draft goes (draft = 7 days in the policy file).
    later = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    again = defs.resolve_job_def("retention_cleanup_job").execute_in_process(
        instance=instance,
        run_config={"ops": {"retention_cleanup": {"config": {"as_of": later}}}},
    )
    assert _op_metadata(again, "retention_cleanup")["records_deleted"] == 1
    assert sorted(p for (p,) in root.query("SELECT prompt FROM generations"))[0] == (
        "A final painting"
    )


@pytest.mark.slow
def test_history_checks_fail_visibly(root: Root, instance: dg.DagsterInstance) -> None:
    root.batch("checked", [("A glass of water", ""), ("A loaf of bread", "")])
    (key,) = root.query("SELECT image_key FROM generations WHERE prompt = 'A loaf of bread'")[0]
    root.store.delete([key])
    result = defs.resolve_job_def("usage_report_job").execute_in_process(instance=instance)
    assert result.success  # a failed check is shown, it does not hide the report
    outcomes = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not outcomes["stored_objects_match"].passed
    missing = outcomes["stored_objects_match"].metadata["missing"].value
    assert len(missing) == 1
    assert all(
        outcomes[name].passed for name in ("ids_unique", "status_present", "cost_non_negative")
    )


def test_the_id_check_catches_a_writer_that_broke_the_row_key(root: Root) -> None:
    """A second current row for one id and row key (a writer that appended to
    ``generations`` instead of MERGE-ing) fails the check, with the culprits named."""
    root.batch("clash", [("A pear on a plate", ""), ("A plum in a bowl", "")])
    assert history_health.ids_unique(root.settings, root.store).passed
    (pear,) = root.current_ids("prompt = 'A pear on a plate'")
    rows = read_rows(root.settings, GENERATIONS, [pear])
    HistoryTables(root.settings).append(GENERATIONS, rows)
    outcome = history_health.ids_unique(root.settings, root.store)
    assert not outcome.passed and outcome.failures == 2  # the id, and the row key
    ((key,),) = root.query("SELECT DISTINCT row_key FROM generations WHERE id = ?", [pear])
    assert pear in outcome.examples and f"clash/{key}/0" in outcome.examples

"""The production instance (deploy/dagster.yaml) as a service: PostgreSQL-backed Dagster with
`dagster-daemon run` and `dagster-webserver` as real processes.

Nothing is faked: a database of the test's own on the PostgreSQL server at 127.0.0.1:5432
(created, then dropped), the repository's workspace.yaml, the real prompts sensor ticking in
the daemon, the usage-report schedule firing for real (its cron set to every minute through
IDEOGRAM_REPORT_CRON), the runs launched by the daemon in their own processes, and the
embedded Ideogram simulator (no API key) generating the images into a temporary local root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from tests.deploy_support import (
    REPO,
    dagster_bin,
    database_exists,
    free_port,
    graphql,
    service_env,
    services,
    temporary_database,
    wait_for,
)

RUNS_QUERY = """
{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }
"""
SENSOR_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    sensors { name sensorState { status ticks(limit: 50) { status runIds } } } } } } }
"""
CSV = (
    "prompt,seed,num_images\n"
    "A harbour at night,11,2\nA tram in the rain,12,1\nTwo paper boats [sim:unsafe],13,1\n"
)
REPORT_SCHEDULE = "usage_report_schedule"


def _finished(instance: dg.DagsterInstance, tag: str, value: str) -> dg.DagsterRun | None:
    runs = [run for run in instance.get_runs() if run.tags.get(tag) == value]
    return runs[0] if runs and runs[0].is_finished else None


@pytest.mark.slow
def test_daemon_and_webserver_on_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    # A new CSV waiting in the folder: the sensor's first tick finds it.
    (prompts / "harbour-night.csv").write_text(CSV, encoding="utf-8")
    storage = tmp_path / "storage"
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()

    with temporary_database() as db, services() as start:
        db_name = db.name
        for name, value in db.env().items():  # this process reads the instance too
            monkeypatch.setenv(name, value)
        env = service_env(
            DAGSTER_HOME=str(home),
            IDEOGRAM_PROMPTS_DIR=str(prompts),
            IDEOGRAM_STORAGE=str(storage),
            IDEOGRAM_SIMULATOR_LATENCY="0",
            IDEOGRAM_SIMULATOR_IMAGE_SCALE="0.25",
            IDEOGRAM_REPORT_CRON="* * * * *",  # the schedule fires within a minute
            **db.env(),
        )
        workspace = ["-w", str(REPO / "workspace.yaml")]
        daemon = start(
            "daemon", [dagster_bin("dagster-daemon"), "run", *workspace], env=env, cwd=REPO,
            log_dir=logs,
        )  # fmt: skip
        webserver = start(
            "webserver",
            [dagster_bin("dagster-webserver"), *workspace, "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            cwd=REPO,
            log_dir=logs,
        )
        watch = [daemon, webserver]

        with dg.DagsterInstance.from_config(str(home)) as instance:
            run = wait_for(
                "the sensor's run to finish",
                lambda: _finished(instance, "dagster/sensor_name", "prompts_sensor"),
                timeout=150, every=1, watch=watch,
            )  # fmt: skip
            assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
            assert run.tags["dagster/partition"] == "harbour-night"
            event = instance.get_latest_materialization_event(dg.AssetKey("batch_images"))
            assert event is not None and event.run_id == run.run_id
            metadata = event.asset_materialization.metadata
            assert (metadata["run_stored"].value, metadata["run_unsafe"].value) == (3, 1)
            assert (metadata["batch_stored"].value, metadata["batch_unsafe"].value) == (3, 1)
            assert "SIMULATED" in metadata["mode"].value
            assert metadata["estimated_cost_usd"].value == metadata["run_cost_usd"].value
            assert instance.get_dynamic_partitions("batches") == ["harbour-night"]

            scheduled = wait_for(
                "the usage-report schedule's run to finish",
                lambda: _finished(instance, "dagster/schedule_name", REPORT_SCHEDULE),
                timeout=150, every=1, watch=watch,
            )  # fmt: skip
            assert scheduled.status == dg.DagsterRunStatus.SUCCESS, scheduled.status

        # Everything the UI shows lives in PostgreSQL: runs, events, ticks, instigator state.
        assert dict(db.query("SELECT run_id, status FROM runs")) == {
            run.run_id: "SUCCESS",
            scheduled.run_id: "SUCCESS",
        }
        batch_materializations = db.query(
            "SELECT run_id FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND asset_key = %s",
            ('["batch_images"]',),
        )
        assert batch_materializations == [(run.run_id,)]
        ticks = db.query(
            "SELECT j.job_type, t.tick_body FROM job_ticks t "
            "JOIN jobs j ON j.job_origin_id = t.job_origin_id WHERE t.status = 'SUCCESS'"
        )
        assert any(kind == "SENSOR" and run.run_id in body for kind, body in ticks), ticks
        assert any(kind == "SCHEDULE" and scheduled.run_id in body for kind, body in ticks)
        states = db.query("SELECT job_type, status, job_body FROM jobs")
        declared = {(kind, status) for kind, status, body in states if "prompts_sensor" in body}
        # Running because the code says so (default_status), recorded as such in PostgreSQL.
        assert declared == {("SENSOR", "DECLARED_IN_CODE")}
        assert any(kind == "SCHEDULE" and REPORT_SCHEDULE in body for kind, _status, body in states)

        # The webserver reads the same record.
        wait_for("the webserver", lambda: graphql(port, "{ version }"), watch=watch)
        runs = graphql(port, RUNS_QUERY)["runsOrError"]["results"]
        assert {r["runId"]: r["status"] for r in runs} == {
            run.run_id: "SUCCESS",
            scheduled.run_id: "SUCCESS",
        }
        sensors = graphql(port, SENSOR_QUERY)["repositoriesOrError"]["nodes"][0]["sensors"]
        state = next(s for s in sensors if s["name"] == "prompts_sensor")["sensorState"]
        assert state["status"] == "RUNNING"
        assert any(run.run_id in tick["runIds"] for tick in state["ticks"])

        # The images are where the run said; the scheduled report went to reports/.
        assert len(list((storage / "images").rglob("*.png"))) == 3
        assert list((storage / "reports").rglob("*.md"))

    assert not database_exists(db_name)

"""The production instance (deploy/dagster.yaml) as a service: PostgreSQL-backed Dagster with
`dagster-daemon run` and `dagster-webserver` as real processes.

Nothing is faked: a database of the test's own on the PostgreSQL server at 127.0.0.1:5432
(created, then dropped), the repository's workspace.yaml, the real prompts sensor ticking in
the daemon, the run launched by the daemon in its own process, and the embedded Ideogram
simulator (no API key) generating the images into a temporary local storage root.
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


def _tick_counts(db) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return dict(db.query("SELECT status, count(*) FROM job_ticks GROUP BY status"))


def test_daemon_and_webserver_on_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    storage = tmp_path / "storage"
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()

    with temporary_database() as db, services() as start:
        db_name = db.name
        for name, value in db.env().items():  # this process reads the instance too
            monkeypatch.setenv(name, value)
        env = service_env(
            tmp_path,
            DAGSTER_HOME=str(home),
            IDEOGRAM_PROMPTS_DIR=str(prompts),
            IDEOGRAM_STORAGE=str(storage),
            IDEOGRAM_SIMULATOR_LATENCY="0",
            IDEOGRAM_SIMULATOR_IMAGE_SCALE="0.25",
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

        # The sensor ticks on an empty folder first: a SKIPPED tick, stored in PostgreSQL.
        watch = [daemon, webserver]
        wait_for(
            "the sensor's first tick in PostgreSQL",
            lambda: _tick_counts(db).get("SKIPPED"),
            watch=watch,
        )
        (prompts / "harbour-night.csv").write_text(
            "prompt,seed,num_images\nA harbour at night,11,2\nA tram in the rain,12,1\n"
            "Two paper boats [sim:unsafe],13,1\n",
            encoding="utf-8",
        )

        with dg.DagsterInstance.from_config(str(home)) as instance:

            def finished_run() -> dg.DagsterRun | None:
                runs = instance.get_runs()
                done = [run for run in runs if run.is_finished]
                return done[0] if done else None

            run = wait_for(
                "the sensor's run to finish", finished_run, timeout=150, every=1, watch=watch
            )
            assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
            assert run.tags["dagster/partition"] == "harbour-night"
            assert run.tags["dagster/sensor_name"] == "prompts_sensor"
            event = instance.get_latest_materialization_event(dg.AssetKey("batch_images"))
            assert event is not None and event.run_id == run.run_id
            metadata = event.asset_materialization.metadata
            assert (metadata["stored"].value, metadata["unsafe"].value) == (3, 1)
            assert "SIMULATED" in metadata["mode"].value
            assert metadata["estimated_cost_usd"].value == metadata["cost_usd"].value
            assert instance.get_dynamic_partitions("batches") == ["harbour-night"]

        # Everything the UI shows lives in PostgreSQL: runs, events, ticks, sensor state.
        assert db.query("SELECT run_id, status FROM runs") == [(run.run_id, "SUCCESS")]
        materializations = db.query(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        assert materializations == [(1,)]
        ticks = _tick_counts(db)
        assert ticks.get("SKIPPED", 0) >= 1 and ticks.get("SUCCESS", 0) >= 1, ticks
        ticked_runs = db.query(
            "SELECT count(*) FROM job_ticks WHERE status = 'SUCCESS' AND tick_body LIKE %s",
            (f"%{run.run_id}%",),
        )
        assert ticked_runs == [(1,)]
        sensor_state = db.query(
            "SELECT job_type, status FROM jobs WHERE job_body LIKE %s", ("%prompts_sensor%",)
        )
        # Running because the code says so (default_status), recorded as such in PostgreSQL.
        assert sensor_state == [("SENSOR", "DECLARED_IN_CODE")]

        # The webserver reads the same record.
        wait_for("the webserver", lambda: graphql(port, "{ version }"), watch=watch)
        runs = graphql(port, RUNS_QUERY)["runsOrError"]["results"]
        assert [(r["runId"], r["status"]) for r in runs] == [(run.run_id, "SUCCESS")]
        sensors = graphql(port, SENSOR_QUERY)["repositoriesOrError"]["nodes"][0]["sensors"]
        state = next(s for s in sensors if s["name"] == "prompts_sensor")["sensorState"]
        assert state["status"] == "RUNNING"
        assert any(run.run_id in tick["runIds"] for tick in state["ticks"])

        # The images are where the run said.
        assert len(list((storage / "images").rglob("*.png"))) == 3

    assert not database_exists(db_name)

"""The Dagster code location as Dagster itself loads it: definitions, sensor, job, UI.

Real Dagster throughout: a temporary instance (SQLite in tmp_path), the sensor evaluated
against it, the job executed in it, and `dagster dev` started as a subprocess and asked
over GraphQL what a person would see in the UI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from ideogram_pipeline.definitions import defs
from ideogram_pipeline.defs.sensors import prompts_sensor

REPO = Path(__file__).resolve().parents[1]


def test_definitions_resolve() -> None:
    repo = defs.get_repository_def()
    assert sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()) == [
        "batch_images",
        "generation_history",
        "metadata_compaction",
        "retention_cleanup",
        "usage_report",
    ]
    assert {job.name for job in repo.get_all_jobs()} >= {"batch_job"}
    assert [s.name for s in repo.sensor_defs] == ["prompts_sensor"]
    assert defs.resolve_job_def("batch_job").partitions_def is not None


@pytest.fixture
def instance(tmp_path: Path):
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        yield instance


def _evaluate(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    return prompts_sensor(context)


def test_sensor_adds_partitions_and_runs_each_file_once(
    instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "spring.csv").write_text("prompt\nA tulip\n", encoding="utf-8")
    (prompts / "odd name #1.csv").write_text("prompt\nA daisy\n", encoding="utf-8")
    (prompts / "notes.txt").write_text("not a batch", encoding="utf-8")
    monkeypatch.setenv("IDEOGRAM_PROMPTS_DIR", str(prompts))

    first = _evaluate(instance, None)
    keys = sorted(r.partition_key for r in first.run_requests)
    assert len(keys) == 2 and "spring" in keys
    odd = next(k for k in keys if k != "spring")
    assert "#" not in odd and " " not in odd  # escaped into a safe partition key
    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == keys
    run_keys = {r.run_key for r in first.run_requests}
    for key in keys:
        instance.add_dynamic_partitions("batches", [key])

    unchanged = _evaluate(instance, first.cursor)
    assert unchanged.run_requests == [] and unchanged.dynamic_partitions_requests == []

    (prompts / "spring.csv").write_text("prompt\nA tulip\nA crocus\n", encoding="utf-8")
    edited = _evaluate(instance, unchanged.cursor)
    assert [r.partition_key for r in edited.run_requests] == ["spring"]
    assert edited.run_requests[0].run_key not in run_keys


@pytest.mark.slow
def test_sensor_run_request_executes_the_job(
    instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run a sensor requests, executed as the daemon would, with the embedded simulator."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "nightly.csv").write_text("prompt,seed\nA tram at night,5\n", encoding="utf-8")
    monkeypatch.setenv("IDEOGRAM_PROMPTS_DIR", str(prompts))
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_LATENCY", "0")
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_IMAGE_SCALE", "0.25")
    monkeypatch.delenv("IDEOGRAM_API_KEY", raising=False)
    request = _evaluate(instance, None).run_requests[0]
    instance.add_dynamic_partitions("batches", [request.partition_key])
    result = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=request.run_config
    )
    assert result.success
    metadata = result.asset_materializations_for_node("batch_images")[0].metadata
    assert metadata["stored"].value == 1
    assert "SIMULATED" in metadata["mode"].value
    # A UI launch needs no config: the partition key finds its file in the prompts folder.
    again = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance, partition_key=request.partition_key
    )
    assert (
        again.asset_materializations_for_node("batch_images")[0]
        .metadata["skipped_already_done"]
        .value
        == 1
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ASSETS_QUERY = """
{ assetNodes { assetKey { path } partitionKeysByDimension { partitionKeys } }
  repositoriesOrError { ... on RepositoryConnection { nodes { sensors { name } } } } }
"""


@pytest.mark.slow
def test_dagster_dev_shows_asset_sensor_and_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # dagster.yaml reads it
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDEOGRAM_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        IDEOGRAM_STORAGE=str(tmp_path / "data"),
        IDEOGRAM_PROMPTS_DIR=str(tmp_path / "no-prompts"),  # the running sensor finds nothing
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("batches", ["demo-landscapes"])
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        data = None
        while time.monotonic() < deadline:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/graphql", json={"query": ASSETS_QUERY}, timeout=10
                )
                data = response.json().get("data")
                if data and data["assetNodes"]:
                    break
            except (httpx.HTTPError, json.JSONDecodeError):
                pass
            time.sleep(1)
        assert data, "dagster dev did not answer GraphQL in 120 s"
        nodes = {tuple(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        assert ("batch_images",) in nodes
        partitions = nodes[("batch_images",)]["partitionKeysByDimension"][0]["partitionKeys"]
        assert "demo-landscapes" in partitions
        repository = data["repositoriesOrError"]["nodes"][0]
        assert [s["name"] for s in repository["sensors"]] == ["prompts_sensor"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

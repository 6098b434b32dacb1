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
from ideogram_pipeline.defs.batches.sensors import prompts_sensor
from ideogram_pipeline.defs.resources import build_resources
from tests.conftest import make_env
from tests.definitions_snapshot import SNAPSHOT

REPO = Path(__file__).resolve().parents[1]


def test_definitions_match_the_snapshot() -> None:
    """Asset keys, checks, jobs (nodes and their config fields), schedules with crons,
    sensors and resource keys, loaded in a fresh interpreter with no project variables.
    A deliberate change rewrites the snapshot: ``python -m tests.definitions_snapshot
    --update``."""
    env = make_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    loaded = subprocess.run(
        [sys.executable, "-m", "tests.definitions_snapshot"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout) == json.loads(SNAPSHOT.read_text(encoding="utf-8"))


def test_definitions_resolve() -> None:
    repo = defs.get_repository_def()
    assert sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()) == [
        "batch_images",
        "generation_history",
        "usage_report",
    ]
    assert {job.name for job in repo.get_all_jobs()} >= {"batch_job"}
    assert [s.name for s in repo.sensor_defs] == ["prompts_sensor"]
    assert defs.resolve_job_def("batch_job").partitions_def is not None


def test_loading_the_definitions_reads_no_file(tmp_path: Path) -> None:
    """Loading the code location opens no file of the project's configuration: schedules
    take their crons from code and the environment, not from retention.toml."""
    (tmp_path / "retention.toml").write_text("[schedules]\ncleanup_cron = 'not read'\n")
    probe = (
        "import builtins, io, sys\n"
        "opened = []\n"
        "real = io.open\n"
        "def spy(file, *args, **kwargs):\n"
        "    opened.append(str(file))\n"
        "    return real(file, *args, **kwargs)\n"
        "builtins.open = io.open = spy\n"
        "import ideogram_pipeline.definitions as d\n"
        "d.defs.get_repository_def()\n"
        "print('\\n'.join(p for p in opened if p.endswith(('.toml', '.csv'))))\n"
    )
    env = make_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    opened = loaded.stdout.split()
    assert not [p for p in opened if p.endswith(".csv") or "retention" in p], opened


@pytest.fixture
def instance(tmp_path: Path):
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        yield instance


def _evaluate(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=build_resources()
    ) as context:
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
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))  # no history yet

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
    assert metadata["run_stored"].value == metadata["batch_stored"].value == 1
    assert "SIMULATED" in metadata["mode"].value
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert sorted(checks) == ["rows_accounted_for", "stored_checksums_match"]
    assert all(c.passed for c in checks.values())
    assert checks["stored_checksums_match"].metadata["checked"].value == 1
    # A UI launch needs no config: the partition key finds its file in the prompts folder.
    again = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance, partition_key=request.partition_key
    )
    rerun = again.asset_materializations_for_node("batch_images")[0].metadata
    assert rerun["skipped_already_done"].value == 1
    # The re-run stored and paid nothing, and the partition still says what it holds.
    assert (rerun["run_stored"].value, rerun["run_cost_usd"].value) == (0, 0.0)
    assert rerun["batch_stored"].value == 1
    assert rerun["batch_cost_usd"].value == metadata["run_cost_usd"].value > 0
    again_checks = {c.check_name: c for c in again.get_asset_check_evaluations()}
    assert all(c.passed for c in again_checks.values())
    assert again_checks["stored_checksums_match"].metadata["checked"].value == 0


def _run_batch(instance: dg.DagsterInstance, key: str, csv: Path) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("batches", [key])
    return defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance,
        partition_key=key,
        run_config={"ops": {"batch_images": {"config": {"csv_path": str(csv)}}}},
    )


@pytest.fixture
def simulated_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A prompts folder and a local storage root, batches run by the embedded simulator."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    monkeypatch.setenv("IDEOGRAM_PROMPTS_DIR", str(prompts))
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_LATENCY", "0")
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_IMAGE_SCALE", "0.25")
    monkeypatch.delenv("IDEOGRAM_API_KEY", raising=False)
    return prompts


@pytest.mark.slow
def test_first_sensor_tick_does_not_rerun_a_batch_already_run(
    tmp_path: Path, simulated_root: Path
) -> None:
    """``dagster dev`` started on a folder the CLI already ran: the first tick (no cursor)
    adds every partition but requests runs only for files with rows not yet recorded."""
    prompts = simulated_root
    done = prompts / "done.csv"
    done.write_text("prompt,seed\nA quiet harbour,1\nA bad seed,-5\n", encoding="utf-8")
    grown = prompts / "grown.csv"
    grown.write_text("prompt,seed\nA lantern,2\n", encoding="utf-8")
    edited = prompts / "edited.csv"
    edited.write_text("prompt,seed\nA cat,4\n", encoding="utf-8")
    (tmp_path / "cli_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "cli_home")) as cli_instance:
        assert _run_batch(cli_instance, "done", done).success  # row 2 is rejected: recorded
        assert _run_batch(cli_instance, "grown", grown).success
        assert _run_batch(cli_instance, "edited", edited).success
    grown.write_text("prompt,seed\nA lantern,2\nA second lantern,3\n", encoding="utf-8")
    # As many rows as before, other content: rows are known by content, so it is new work.
    edited.write_text("prompt,seed\nA dog,4\n", encoding="utf-8")
    (prompts / "new.csv").write_text("prompt\nA kettle\n", encoding="utf-8")

    (tmp_path / "dev_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dev_home")) as instance:
        first = _evaluate(instance, None)
        assert sorted(first.dynamic_partitions_requests[0].partition_keys) == [
            "done",
            "edited",
            "grown",
            "new",
        ]
        assert sorted(r.partition_key for r in first.run_requests) == ["edited", "grown", "new"]
        # Later ticks judge by the cursor: an edit of the finished file runs it again.
        for key in ("done", "edited", "grown", "new"):
            instance.add_dynamic_partitions("batches", [key])
        done.write_text("prompt,seed\nA quiet harbour,1\nA good seed,5\n", encoding="utf-8")
        later = _evaluate(instance, first.cursor)
        assert [r.partition_key for r in later.run_requests] == ["done"]


@pytest.mark.slow
def test_the_checks_fail_when_a_row_or_a_stored_image_is_wrong(
    tmp_path: Path, simulated_root: Path
) -> None:
    """The checksum check reads the stored bytes back: a changed object fails it, named;
    a row of the file with no record fails the row check."""
    from ideogram_pipeline.defs.batches.checks import checksum_check, rows_check
    from ideogram_pipeline.settings import load_settings
    from ideogram_pipeline.storage import open_store

    csv = simulated_root / "checked.csv"
    csv.write_text("prompt,seed\nA pear,1\nA plum,2\n", encoding="utf-8")
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = _run_batch(instance, "checked", csv)
    assert result.success
    run_id = result.run_id[:12]
    settings = load_settings(os.environ)
    store = open_store(settings)
    assert checksum_check(settings, store, "checked", run_id).passed
    image = next((tmp_path / "data" / "images").rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"tampered")
    tampered = checksum_check(settings, store, "checked", run_id)
    assert not tampered.passed
    assert tampered.metadata["checked"].value == 2
    assert len(tampered.metadata["mismatched"].value) == 1
    missing = rows_check(settings, store, "checked", [1, 2, 3])
    assert not missing.passed and missing.metadata["examples"].value == [3]


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

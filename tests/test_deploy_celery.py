"""Scale-out on Dagster's own machinery: the Celery run launcher (deploy/dagster-celery.yaml)
hands each queued run to RabbitMQ, and two `dagster-celery worker` processes execute two
batches at once against one Ideogram account, PostgreSQL storage and an S3 root.

Nothing is faked: the RabbitMQ broker at 127.0.0.1:5672 (a vhost of the test's own, deleted
afterwards), a PostgreSQL database of the test's own (dropped afterwards), the SeaweedFS S3
server, `dagster-daemon run` with the prompts sensor, and one Ideogram simulator in this
process that both workers call, so its counters see the whole account.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ideogram_pipeline import history
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.storage import open_store
from tests.conftest import new_bucket
from tests.deploy_support import (
    REPO,
    dagster_bin,
    database_exists,
    service_env,
    services,
    temporary_database,
    temporary_vhost,
    vhost_exists,
    wait_for,
)
from tests.support.seaweed import SeaweedServer

pytestmark = pytest.mark.s3

#: The account's in-flight image limit, as the simulator enforces it. Each of the two runs
#: alone could fill it; IDEOGRAM_CONCURRENT_BATCHES (= the pool's limit) gives each half.
ACCOUNT_LIMIT = 4
CONCURRENT_BATCHES = 2
ROWS_PER_BATCH = 18
BATCHES = ("north", "south")


def test_celery_config_is_the_production_config_plus_the_launcher() -> None:
    base = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    celery = yaml.safe_load((REPO / "deploy" / "dagster-celery.yaml").read_text())
    launcher = celery.pop("run_launcher")
    assert celery == base
    assert launcher["class"] == "CeleryRunLauncher"


def _write_batch(folder: Path, name: str) -> None:
    lines = ["prompt,seed"] + [
        f"A {name} lighthouse number {n} in the fog,{n}" for n in range(1, ROWS_PER_BATCH + 1)
    ]
    (folder / f"{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.slow
def test_two_celery_workers_run_two_batches_at_once(
    tmp_path: Path, s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster-celery.yaml", home / "dagster.yaml")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name in BATCHES:
        _write_batch(prompts, name)
    logs = tmp_path / "logs"
    logs.mkdir()
    storage = f"s3://{new_bucket(s3_server)}/scale-out"
    config = SimulatorConfig(latency_s=0.4, max_inflight=ACCOUNT_LIMIT, image_scale=0.25)

    with (
        running_simulator(config) as simulator,
        temporary_database() as db,
        temporary_vhost() as vhost,
        services() as start,
    ):
        db_name, vhost_name = db.name, vhost
        env = service_env(
            DAGSTER_HOME=str(home),
            DAGSTER_CELERY_BROKER_URL=f"pyamqp://guest:guest@127.0.0.1:5672/{vhost}",
            IDEOGRAM_API_KEY=simulator.api_key,
            IDEOGRAM_BASE_URL=simulator.base_url,
            IDEOGRAM_MAX_INFLIGHT=str(ACCOUNT_LIMIT),
            IDEOGRAM_CONCURRENT_BATCHES=str(CONCURRENT_BATCHES),
            IDEOGRAM_STORAGE=storage,
            IDEOGRAM_PROMPTS_DIR=str(prompts),
            **db.env(),
            **s3_server.env(),
        )
        for name, value in db.env().items():  # this process reads the instance too
            monkeypatch.setenv(name, value)

        # --pool=solo: the run executes in the worker's main process, which may start the
        # batch step's subprocess (a prefork pool child is daemonic and may not).
        worker_argv = [
            dagster_bin("dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
            "-y", str(REPO / "deploy" / "celery-worker.yaml"), "-q", "dagster",
        ]  # fmt: skip
        workers = [
            start(
                f"worker-{name}",
                [*worker_argv, "-n", f"worker-{name}", "--", "--pool=solo"],
                env=env,
                cwd=REPO,
                log_dir=logs,
            )
            for name in ("a", "b")
        ]
        for worker in workers:
            ready = lambda w=worker: "ready." in w.tail(200)  # noqa: E731
            wait_for(f"{worker.name} to be ready", ready, watch=workers)
        # The operator's step to run two batches at once: the pool's limit, set in the instance,
        # to the same number as IDEOGRAM_CONCURRENT_BATCHES.
        subprocess.run(
            [dagster_bin("dagster"), "instance", "concurrency", "set", "ideogram_account",
             str(CONCURRENT_BATCHES)],
            env=env, cwd=REPO, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        daemon = start(
            "daemon",
            [dagster_bin("dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
            env=env,
            cwd=REPO,
            log_dir=logs,
        )
        watch = [*workers, daemon]

        with dg.DagsterInstance.from_config(str(home)) as instance:

            def both_finished() -> list[dg.DagsterRun] | None:
                runs = instance.get_runs()
                done = [run for run in runs if run.is_finished]
                return done if len(done) == len(BATCHES) else None

            runs = wait_for("both runs to finish", both_finished, timeout=240, every=1, watch=watch)
            assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
            assert sorted(run.tags["dagster/partition"] for run in runs) == sorted(BATCHES)
            stats = [instance.get_run_stats(run.run_id) for run in runs]
            task_ids = {run.tags["dagster-celery/task_id"]: run for run in runs}

        # Each worker executed exactly one of the runs ...
        received = re.compile(r"Task execute_job\[([0-9a-f-]+)\] received")
        executed = {worker.name: set(received.findall(worker.tail(2000))) for worker in workers}
        assert all(len(ids) == 1 for ids in executed.values()), executed
        assert set().union(*executed.values()) == set(task_ids)
        # ... and they ran at the same time.
        first, second = stats
        assert first.start_time < second.end_time and second.start_time < first.end_time

    assert not database_exists(db_name) and not vhost_exists(vhost_name)

    # Both batches landed in one history on the S3 root, every row accounted for once.
    settings = load_settings({"IDEOGRAM_STORAGE": storage, **s3_server.env()})
    con = history.connect(settings)
    try:
        counts = dict(
            con.execute(
                'SELECT batch, count(DISTINCT "row") FROM generations GROUP BY batch'
            ).fetchall()
        )
        statuses = dict(
            con.execute("SELECT status, count(*) FROM generations GROUP BY status").fetchall()
        )
        stored = con.execute(
            "SELECT image_key, size_bytes FROM generations WHERE status = 'stored'"
        ).fetchall()
    finally:
        con.close()
    assert counts == dict.fromkeys(BATCHES, ROWS_PER_BATCH)
    assert set(statuses) <= {"stored", "failed"}
    store = open_store(settings)
    for key, size in stored:
        info = store.head(key)
        assert info is not None and info.size == size

    # The account: never more images in flight than its limit, nothing invalid, nothing paid
    # twice, and every billed image stored.
    sim = simulator.stats
    assert sim.max_images_inflight_seen <= ACCOUNT_LIMIT
    assert sim.invalid_requests == [] and sim.repeat_billed() == {}
    assert sim.billed_images == statuses.get("stored", 0)
    # Sharing held: the simulator never had to refuse a request for the account's limit.
    assert sim.rate_limited == 0
    assert statuses == {"stored": ROWS_PER_BATCH * len(BATCHES)}

"""A batch partition run by Dagster's queue, with a CLI run and a second queued run beside it.

Real processes on the repository's single-machine instance (dagster.yaml, SQLite): the
`dagster-daemon` whose prompts sensor queues the partition's first run and starts it in a
process of its own, a second run of the same partition submitted to the queue with
`dagster job launch` (as the UI's Materialize button or a backfill does), and a CLI
`run` of the same file. The simulator in this process counts what was billed.

- The queued second run waits in the queue (the tag concurrency limit on
  ``dagster/partition``) and starts only after the first has ended, paying nothing.
- The CLI run, which does not queue, finds the batch's lease held by the Dagster run: it
  refuses at once, naming that run, and pays nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from tests.deploy_support import REPO, dagster_bin, service_env, services, wait_for
from tests.support.cli_runs import RUN

ROWS = 32
PARTITION = "harbour"


@pytest.mark.slow
def test_a_queued_partition_run_keeps_a_cli_run_and_a_second_queued_run_out(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    csv = prompts / f"{PARTITION}.csv"
    lines = ["prompt,seed"] + [f"A harbour crane number {n} at dusk,{n}" for n in range(ROWS)]
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logs = tmp_path / "logs"
    logs.mkdir()
    config = SimulatorConfig(latency_s=2.0, max_inflight=4, image_scale=0.25)

    with running_simulator(config) as sim, services() as start:
        env = service_env(
            DAGSTER_HOME=str(home),
            IDEOGRAM_API_KEY=sim.api_key,
            IDEOGRAM_BASE_URL=sim.base_url,
            IDEOGRAM_MAX_INFLIGHT="4",
            IDEOGRAM_STORAGE=str(tmp_path / "storage"),
            IDEOGRAM_PROMPTS_DIR=str(prompts),
        )
        daemon = start(
            "daemon",
            [dagster_bin("dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
            env=env,
            cwd=REPO,
            log_dir=logs,
        )
        # The sensor queues the partition's run; the daemon starts it; it begins to pay.
        wait_for(
            "the queued run to start paying",
            lambda: sim.stats.billed_images > 0,
            timeout=180,
            watch=[daemon],
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (first,) = instance.get_runs()
            assert first.tags["dagster/partition"] == PARTITION

            # The CLI run of the same file does not queue: the lease turns it away.
            cli = subprocess.Popen(
                [*RUN, str(csv), "--batch", PARTITION],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            # A second run of the partition, through the queue, while the first runs.
            run_config = tmp_path / "run_config.json"
            run_config.write_text(
                json.dumps({"ops": {"batch_images": {"config": {"csv_path": str(csv)}}}}),
                encoding="utf-8",
            )
            launched = subprocess.run(
                [dagster_bin("dagster"), "job", "launch", "-w", str(REPO / "workspace.yaml"),
                 "-j", "batch_job", "-c", str(run_config),
                 "--tags", json.dumps({"dagster/partition": PARTITION, "test": "second"})],
                env=env, cwd=REPO, capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert launched.returncode == 0, launched.stderr[-3000:]

            (second,) = instance.get_runs(filters=dg.RunsFilter(tags={"test": "second"}))
            first = instance.get_run_by_id(first.run_id) or first
            if first.status == dg.DagsterRunStatus.STARTED:  # nearly always: 16 s of work
                assert second.status == dg.DagsterRunStatus.QUEUED, second.status

            cli_out, cli_err = cli.communicate(timeout=180)
            billed_while_running = sim.stats.billed_images

            def both_finished() -> list[dg.DagsterRun] | None:
                runs = [instance.get_run_by_id(run.run_id) for run in (first, second)]
                ended = [run for run in runs if run is not None and run.is_finished]
                return ended if len(ended) == 2 else None

            first, second = wait_for(
                "both queued runs to end", both_finished, timeout=240, watch=[daemon]
            )
            assert [run.status for run in (first, second)] == [dg.DagsterRunStatus.SUCCESS] * 2
            first_stats = instance.get_run_stats(first.run_id)
            second_stats = instance.get_run_stats(second.run_id)
        billed = sim.stats.billed_images

    assert cli.returncode != 0, cli_out[-2000:]
    assert f"is already being run by run {first.run_id[:12]}" in cli_err, cli_err[-2000:]
    assert billed_while_running <= ROWS
    assert billed == ROWS  # every row paid once, by the first queued run
    # The second queued run waited in the queue: it started once the first had ended.
    assert second_stats.start_time is not None and first_stats.end_time is not None
    assert second_stats.start_time >= first_stats.end_time

"""Operations on stored images (issue 19), end to end through the real CLI in child
processes: a batch is generated against the bundled simulator, a selection of it is
upscaled and described with ``apply``, re-running pays nothing, a run killed mid-operation
is resumed without paying twice, and a source deleted by retention is a rejected row.

Real components: the simulator (it validates each multipart body against Ideogram's spec
and bills per route), Delta tables in a folder (or on SeaweedFS), DuckDB, a Dagster
instance in a temporary DAGSTER_HOME.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ideogram_pipeline import history
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.support.cli_runs import run_and_kill, simulator_env

pytestmark = pytest.mark.slow  # several CLI runs through Dagster each

CLI = [sys.executable, "-c", "from ideogram_pipeline.cli import main; main()"]
BEST = "list_contains(tags, 'best')"


def _cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _generate(env: dict[str, str], tmp_path: Path, rows: int = 4) -> None:
    """A batch of ``rows`` images, the even rows tagged ``best``."""
    lines = ["prompt,seed,tags"]
    lines += [
        f'"A lighthouse on a cliff, study {n}",{n},{"best" if n % 2 == 0 else "draft"}'
        for n in range(rows)
    ]
    csv = tmp_path / "lighthouses.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _cli(env, "run", str(csv))


def _rows(env: dict[str, str], sql: str) -> list[dict[str, object]]:
    done = _cli(env, "query", sql, "--format", "json")
    return list(json.loads(done.stdout))


@pytest.fixture
def sim() -> Simulator:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as simulator:
        yield simulator


def test_keep_the_best_and_upscale_them(sim: Simulator, tmp_path: Path) -> None:
    env = simulator_env(sim, tmp_path)
    _generate(env, tmp_path)
    best = {r["id"] for r in _rows(env, f"SELECT id FROM generations WHERE {BEST}")}
    assert len(best) == 2

    done = _cli(env, "apply", "upscale", "--where", BEST, "--resemblance", "60")
    assert "2 image(s) selected" in done.stderr
    upscaled = _rows(
        env,
        "SELECT id, status, operation, derived_from, cost_usd, model, stored_uri "
        "FROM generations WHERE operation = 'upscale'",
    )
    assert {r["derived_from"] for r in upscaled} == best
    assert all(r["status"] == "stored" and r["cost_usd"] == 0.06 for r in upscaled)
    assert all(r["model"] is None and str(r["stored_uri"]).endswith(".png") for r in upscaled)
    requests_before = sim.stats.billed_requests

    again = _cli(env, "apply", "upscale", "--where", BEST, "--resemblance", "60")
    assert sim.stats.billed_requests == requests_before, again.stdout
    assert "skipped already done   2" in again.stdout
    estimate = _cli(env, "apply", "upscale", "--where", BEST, "--resemblance", "60", "--dry-run")
    assert "rows to send           0" in estimate.stdout

    _cli(env, "apply", "describe", "--where", BEST)
    described = _rows(
        env,
        "SELECT derived_from, description, cost_usd, stored_uri FROM generations "
        "WHERE operation = 'describe'",
    )
    assert {r["derived_from"] for r in described} == best
    assert all(r["description"] and r["cost_usd"] == 0.01 for r in described)
    assert all(r["stored_uri"] is None for r in described)
    texts = {r["derived_from"]: r["description"] for r in described}
    sources = _rows(env, f"SELECT id, description FROM generations WHERE {BEST}")
    assert {r["id"]: r["description"] for r in sources} == texts  # set in place on the source
    assert "lighthouse" in str(next(iter(texts.values()))).lower()

    child = next(r for r in upscaled)
    lineage = _cli(env, "lineage", str(child["id"]), "--format", "json").stdout
    assert str(child["derived_from"]) in lineage and '"upscale"' in lineage
    shown = _cli(env, "inspect", str(child["id"])).stdout  # the PNG's own text chunks
    assert "upscale" in shown and str(child["derived_from"]) in shown


def test_options_an_operation_does_not_take_are_refused_before_anything_runs(
    sim: Simulator, tmp_path: Path
) -> None:
    env = simulator_env(sim, tmp_path)
    _generate(env, tmp_path, rows=2)
    billed = sim.stats.billed_requests
    no_resolution = _cli(env, "apply", "reframe", "--where", "true", ok=False)
    assert no_resolution.returncode != 0
    assert "--resolution: is empty; reframe needs resolution" in no_resolution.stderr
    wrong = _cli(
        env, "apply", "remix", "--where", "true", "--prompt", "x", "--resemblance", "5", ok=False
    )
    assert "--resemblance: remix does not take resemblance" in wrong.stderr
    bad_sql = _cli(env, "apply", "upscale", "--where", "no_such_column = 1", ok=False)
    assert bad_sql.returncode != 0 and "--where" in bad_sql.stderr
    nothing = _cli(env, "apply", "upscale", "--where", "false")
    assert "nothing to do" in nothing.stdout
    assert sim.stats.billed_requests == billed


def test_the_cost_guard_prices_operations_and_quotes_only_where_ideogram_documents_it(
    sim: Simulator, tmp_path: Path
) -> None:
    env = simulator_env(sim, tmp_path)
    _generate(env, tmp_path, rows=2)
    billed = sim.stats.billed_requests
    upscale = _cli(env, "apply", "upscale", "--where", "true", "--max-cost", "0.1", ok=False)
    assert "estimated cost $0.12 for 2 image(s)" in upscale.stderr
    assert "above max_cost_usd $0.10" in upscale.stderr
    cut = _cli(env, "apply", "remove_background", "--where", "true", "--max-cost", "0.01", ok=False)
    assert "priced by Ideogram's quote for remove_background" in cut.stderr
    assert "estimated cost $0.02" in cut.stderr
    routes = " ".join(sim.stats.requests_by_route)
    # One dry_run quote on remove-background's v2 path; nothing at all on /upscale, which
    # documents no dry_run; nothing billed.
    assert "/v2/image/remove-background/ideogram-1" in routes and "/upscale" not in routes
    assert sim.stats.billed_requests == billed


def test_a_source_deleted_by_retention_is_a_rejected_row(sim: Simulator, tmp_path: Path) -> None:
    env = simulator_env(sim, tmp_path)
    _generate(env, tmp_path, rows=2)
    source = _rows(env, "SELECT id FROM generations ORDER BY row LIMIT 1")[0]["id"]
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    _cli(env, "cleanup", "--older-than", "1", "--as-of", tomorrow)
    batch = tmp_path / "after.csv"
    batch.write_text(f"operation,image\nupscale,{source}\n", encoding="utf-8")
    billed = sim.stats.billed_requests
    _cli(env, "run", str(batch))
    rejected = _rows(env, "SELECT status, error FROM generations WHERE batch = 'after'")
    assert rejected[0]["status"] == "rejected"
    assert f"record {source} was deleted by retention cleanup" in str(rejected[0]["error"])
    assert "field 'image'" in str(rejected[0]["error"])
    assert sim.stats.billed_requests == billed


def test_a_killed_operation_batch_resumes_without_paying_twice(tmp_path: Path) -> None:
    """remove_background goes to Ideogram's v2 path asynchronously: killed after its first
    submissions, the re-run polls the recorded generation ids instead of paying again."""
    config = SimulatorConfig(image_scale=0.25, latency_s=1.0, max_inflight=3)
    with running_simulator(config) as sim:
        env = simulator_env(sim, tmp_path, IDEOGRAM_MAX_INFLIGHT="3")
        _generate(env, tmp_path, rows=6)
        route = "/v2/image/remove-background/ideogram-1"
        busy_since: list[float] = []

        def three_generations_running() -> bool:
            # Accepted by the simulator a moment ago: their ids are journaled by now (the
            # window between the answer and the journal is the round trip).
            if sim.stats.images_inflight >= 3 and not busy_since:
                busy_since.append(time.monotonic())
            return bool(busy_since) and time.monotonic() - busy_since[0] > 0.3

        killed = run_and_kill(
            [*CLI, "apply", "remove_background", "--where", "true"],
            env,
            three_generations_running,
        )
        assert killed
        assert sim.stats.billed_by_route[route] < 6  # killed before the selection was done
        _cli(env, "apply", "remove_background", "--where", "true")
        cut = _rows(
            env,
            "SELECT status, derived_from FROM generations WHERE operation = 'remove_background'",
        )
        assert sorted(r["status"] for r in cut) == ["stored"] * 6
        assert len({r["derived_from"] for r in cut}) == 6
        # each source billed once across both runs: the re-run polled the killed run's ids
        assert sim.stats.billed_by_route[route] == 6


def test_a_synchronous_operation_killed_in_flight_is_unknown_never_paid_twice(
    tmp_path: Path,
) -> None:
    """Upscale has no documented v2 path: a run killed while its requests are in flight
    cannot know whether Ideogram ran them, so the re-run leaves those rows ``unknown``
    (possibly billed, resent only when asked) and pays for the rest once."""
    config = SimulatorConfig(image_scale=0.25, latency_s=1.5, max_inflight=2)
    with running_simulator(config) as sim:
        env = simulator_env(sim, tmp_path, IDEOGRAM_MAX_INFLIGHT="2")
        _generate(env, tmp_path, rows=4)
        killed = run_and_kill(
            [*CLI, "apply", "upscale", "--where", "true"],
            env,
            lambda: sim.stats.images_inflight >= 2,
        )
        assert killed
        rerun = _cli(env, "apply", "upscale", "--where", "true")
        assert "possibly billed" in rerun.stdout + rerun.stderr
        rows = _rows(env, "SELECT status FROM generations WHERE operation = 'upscale' ORDER BY row")
        statuses = sorted(str(r["status"]) for r in rows)
        assert statuses.count("unknown") == 2 and statuses.count("stored") == 2
        time.sleep(config.latency_s)  # the killed requests finish (and bill) server-side
        assert max(sim.stats.billed_by_body_hash.values()) == 1  # no body paid twice
        listed = _cli(env, "unknown")
        assert "upscale" in listed.stdout
        assert "2 row(s) possibly billed; resending them would cost $0.12" in listed.stderr


def test_operations_on_s3(s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import new_bucket

    bucket = new_bucket(s3_server)
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        env = simulator_env(sim, tmp_path, **s3_server.env())
        env["IDEOGRAM_STORAGE"] = f"s3://{bucket}/team"
        _generate(env, tmp_path, rows=2)
        _cli(env, "apply", "reframe", "--where", "true", "--resolution", "1024x1024")
        framed = _rows(
            env,
            "SELECT stored_uri, derived_from, resolution FROM generations "
            "WHERE operation = 'reframe'",
        )
        assert len(framed) == 2
        assert all(str(r["stored_uri"]).startswith(f"s3://{bucket}/team/images/") for r in framed)
    settings = load_settings({**s3_server.env(), "IDEOGRAM_STORAGE": f"s3://{bucket}/team"})
    con = history.connect(settings)
    try:
        count = con.execute("SELECT count(*) FROM generations").fetchone()
    finally:
        con.close()
    assert count == (4,)


def test_apply_is_a_launchable_dagster_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launchpad's ``apply_operation_job``: typed config (Dagster refuses a bad value
    before the run), and the batch it builds runs as a partition of ``batch_images``."""
    import dagster as dg

    from ideogram_pipeline.definitions import defs

    monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_LATENCY", "0")
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_IMAGE_SCALE", "0.25")
    monkeypatch.delenv("IDEOGRAM_API_KEY", raising=False)
    csv = tmp_path / "boats.csv"
    csv.write_text("prompt,seed,tags\nA red boat,1,best\nA blue boat,2,draft\n", encoding="utf-8")
    job = defs.resolve_job_def("apply_operation_job")
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("batches", ["boats"])
        generated = defs.resolve_job_def("batch_job").execute_in_process(
            instance=instance,
            partition_key="boats",
            run_config={"ops": {"batch_images": {"config": {"csv_path": str(csv)}}}},
        )
        assert generated.success
        with pytest.raises(dg.DagsterInvalidConfigError, match="operation"):
            job.execute_in_process(
                instance=instance, run_config=_apply_config(operation="flip", where=BEST)
            )
        refused = job.execute_in_process(
            instance=instance,
            run_config=_apply_config(operation="upscale", where=BEST, resemblance=500),
            raise_on_error=False,
        )
        assert not refused.success
        failure = next(e for e in refused.all_events if e.is_step_failure)
        assert "resemblance: 500 is outside 1..100" in str(failure.step_failure_data)
        result = job.execute_in_process(
            instance=instance, run_config=_apply_config(operation="upscale", where=BEST)
        )
        assert result.success
        output = next(e for e in result.all_events if e.is_successful_output)
        op_metadata = output.step_output_data.metadata
        assert op_metadata["selected"].value == 1
        upscale_batch = op_metadata["batch"].value
        assert str(upscale_batch).startswith("upscale-")
        assert upscale_batch in instance.get_dynamic_partitions("batches")
        latest = instance.get_latest_materialization_event(dg.AssetKey("batch_images"))
        assert latest is not None and latest.dagster_event is not None
        assert latest.dagster_event.partition == upscale_batch
        meta = latest.asset_materialization.metadata  # type: ignore[union-attr]
        assert meta["run_stored"].value == 1


def _apply_config(**config: object) -> dict[str, object]:
    return {"ops": {"apply_operation": {"config": config}}}

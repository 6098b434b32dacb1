"""Launch settings of one batch run: model/speed/style overrides, the cost estimate, the
maximum-cost guard and the dry run, in plain Python, through Dagster and through the CLI.

Real components: the bundled simulator on loopback (its billing counters prove what was and
was not paid), the local store or the SeaweedFS S3 server, DuckDB over the written metadata,
and Dagster instances in temporary folders. Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.batches.overrides import OverrideError, RunOverrides, apply_overrides
from ideogram_pipeline.cli import main
from ideogram_pipeline.definitions import defs
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.ideogram.prices import price_per_image
from ideogram_pipeline.runs.cost_guard import CostLimitExceeded, estimate_cost
from ideogram_pipeline.runs.runner import estimate_batch, execute_batch
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator

MIXED = (
    b"prompt,model,rendering_speed,aspect_ratio,style_type,num_images\n"
    b"A fox at dawn,V_3,TURBO,,,2\n"  # 1: V_3 TURBO, 2 images
    b"A harbour,V_2,,,,1\n"  # 2: legacy
    b"A tall tower,V_3,,1x2,,1\n"  # 3: an aspect ratio only V_3 has
    b"An old map,V_1,,,,1\n"  # 4: V_1 takes no style type
    b"Bad row,V_9,,,,1\n"  # 5: rejected by the CSV rules already
)


def _rows(batch):  # type: ignore[no-untyped-def]
    return {row.row: row for row in batch.rows}


def test_model_override_revalidates_every_row() -> None:
    batch = apply_overrides(parse_batch(MIXED, key="mixed"), RunOverrides(model="V_2"))
    rows = _rows(batch)
    assert isinstance(rows[1], GenerationRequest)
    assert (rows[1].model, rows[1].rendering_speed, rows[1].num_images) == ("V_2", None, 2)
    assert isinstance(rows[4], GenerationRequest) and rows[4].model == "V_2"
    assert isinstance(rows[3], RejectedRow) and rows[3].field == "aspect_ratio"
    assert "only for V_3" in rows[3].error and "model overridden to V_2" in rows[3].error
    assert isinstance(rows[5], RejectedRow) and rows[5].field == "model"  # untouched


def test_speed_and_style_overrides_reject_rows_that_cannot_take_them() -> None:
    speed = _rows(apply_overrides(parse_batch(MIXED), RunOverrides(rendering_speed="QUALITY")))
    assert speed[1].rendering_speed == "QUALITY" and speed[3].rendering_speed == "QUALITY"
    assert isinstance(speed[2], RejectedRow) and speed[2].field == "rendering_speed"
    assert "set by the run's override" in speed[2].error
    style = _rows(apply_overrides(parse_batch(MIXED), RunOverrides(style_type="DESIGN")))
    assert style[1].style_type == "DESIGN" and style[2].style_type == "DESIGN"
    assert isinstance(style[4], RejectedRow) and style[4].field == "style_type"
    # RENDER_3D exists for legacy models only: the V_3 rows refuse it, the V_2 row takes it.
    legacy_style = _rows(apply_overrides(parse_batch(MIXED), RunOverrides(style_type="RENDER_3D")))
    assert isinstance(legacy_style[1], RejectedRow) and legacy_style[1].field == "style_type"
    assert legacy_style[2].style_type == "RENDER_3D"


def test_contradictory_overrides_are_refused() -> None:
    with pytest.raises(OverrideError, match="rendering_speed TURBO is only for V_3"):
        RunOverrides(model="V_2", rendering_speed="TURBO")
    batch = parse_batch(MIXED)
    assert apply_overrides(batch, RunOverrides()) is batch


def test_overrides_follow_the_capability_table() -> None:
    # ideogram-4 takes a rendering speed (turbo/default/quality), so the pair is no
    # contradiction; a V_3-only speed is refused per row, naming the field.
    overrides = RunOverrides(model="ideogram-4", rendering_speed="TURBO")
    rows = _rows(apply_overrides(parse_batch(MIXED), overrides))
    assert isinstance(rows[1], GenerationRequest)
    assert (rows[1].model, rows[1].rendering_speed) == ("ideogram-4", "TURBO")
    flash = _rows(
        apply_overrides(
            parse_batch(MIXED), RunOverrides(model="ideogram-4", rendering_speed="FLASH")
        )
    )
    assert isinstance(flash[1], RejectedRow) and flash[1].field == "rendering_speed"
    assert "the rendering speeds of ideogram-4" in flash[1].error


def test_estimate_prices_the_rows_that_will_be_sent() -> None:
    estimate = estimate_cost(parse_batch(MIXED, key="mixed"), max_inflight=10)
    expected = (
        price_per_image("V_3", "TURBO") * 2
        + price_per_image("V_2")
        + price_per_image("V_3")
        + price_per_image("V_1")
    )
    assert estimate.usd == pytest.approx(expected)
    assert (estimate.rows_to_send, estimate.images, estimate.rows_rejected) == (4, 5, 1)
    # A row asking for more images than the account may have in flight is never sent.
    assert estimate_cost(parse_batch(MIXED), max_inflight=1).images == 3


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with running_simulator(SimulatorConfig(latency_s=0, image_scale=0.25)) as sim:
        yield sim


def _settings(storage: str, simulator: Simulator, **extra: str) -> Settings:
    return load_settings(
        {
            "IDEOGRAM_API_KEY": simulator.api_key,
            "IDEOGRAM_BASE_URL": simulator.base_url,
            "IDEOGRAM_STORAGE": storage,
            **extra,
        }
    )


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "local":
        return {"IDEOGRAM_STORAGE": str(tmp_path / "data")}
    from tests.conftest import new_bucket

    server = request.getfixturevalue("s3_server")
    return {"IDEOGRAM_STORAGE": f"s3://{new_bucket(server)}/runs", **server.env()}


@pytest.mark.slow
def test_estimate_skips_rows_already_paid_for(
    storage_env: dict[str, str], simulator: Simulator
) -> None:
    settings = _settings(storage_env.pop("IDEOGRAM_STORAGE"), simulator, **storage_env)
    batch = parse_batch(
        b"prompt,seed\nA kite,1\nA boat [sim:unsafe],2\nA crowd [sim:422],3\nA bell,4\n",
        key="paid",
    )
    before = estimate_batch(batch, settings)
    assert (before.rows_to_send, before.usd) == (4, pytest.approx(4 * price_per_image("V_3")))

    summary = execute_batch(batch, settings)
    assert summary.estimated_cost_usd == pytest.approx(before.usd)
    # The estimate is an upper bound: the 422 row was not billed.
    assert simulator.stats.billed_usd == pytest.approx(3 * price_per_image("V_3"))

    after = estimate_batch(batch, settings)  # stored and unsafe rows are done; the 422 is not
    assert (after.rows_to_send, after.rows_already_done) == (1, 3)
    assert after.usd == pytest.approx(price_per_image("V_3"))
    # Another model is another request: every row would be generated (and paid) again.
    other = estimate_batch(apply_overrides(batch, RunOverrides(model="V_2_TURBO")), settings)
    assert other.rows_to_send == 4 and other.usd == pytest.approx(4 * price_per_image("V_2_TURBO"))


def test_guard_and_dry_run_send_nothing(tmp_path: Path, simulator: Simulator) -> None:
    settings = _settings(str(tmp_path / "data"), simulator)
    batch = parse_batch(b"prompt,num_images\nA kite,4\nA boat,4\n", key="costly")
    with pytest.raises(CostLimitExceeded, match=r"\$0\.48 .*above max_cost_usd \$0\.40"):
        execute_batch(batch, settings, max_cost_usd=0.40)
    dry = execute_batch(batch, settings, dry_run=True)
    assert dry.dry_run and dry.estimated_cost_usd == pytest.approx(0.48)
    assert (dry.stored, dry.cost_usd, dry.history_commits) == (0, 0.0, [])
    # Only Ideogram's free dry-run quotes were asked (one per call): nothing generated.
    assert simulator.stats.billed_images == 0 and simulator.stats.requests_total == 2
    assert not (tmp_path / "data" / "metadata").exists()
    assert execute_batch(batch, settings, max_cost_usd=0.48).stored == 8  # at the limit: runs


# -- through Dagster ---------------------------------------------------------------------------


@pytest.fixture
def dagster_env(
    tmp_path: Path, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> dg.DagsterInstance:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "launch.csv").write_text(
        "prompt,seed,rendering_speed\nA red kite,1,TURBO\nA blue kite,2,\n", encoding="utf-8"
    )
    for name, value in {
        "IDEOGRAM_API_KEY": simulator.api_key,
        "IDEOGRAM_BASE_URL": simulator.base_url,
        "IDEOGRAM_STORAGE": str(tmp_path / "data"),
        "IDEOGRAM_PROMPTS_DIR": str(prompts),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("batches", ["launch"])
        yield instance


def _launch(instance: dg.DagsterInstance, **config: object) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance,
        partition_key="launch",
        run_config={"ops": {"batch_images": {"config": config}}},
        raise_on_error=False,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "V_9"), ("rendering_speed", "FAST"), ("style_type", "VAPORWAVE")],
)
def test_invalid_values_are_rejected_before_the_run(
    dagster_env: dg.DagsterInstance, simulator: Simulator, field: str, value: str
) -> None:
    with pytest.raises(dg.DagsterInvalidConfigError) as error:
        _launch(dagster_env, **{field: value})
    assert f"config:{field}" in str(error.value) and value in str(error.value)
    assert dagster_env.get_runs() == []  # no run was created
    assert simulator.stats.requests_total == 0


@pytest.mark.slow
def test_config_reaches_the_run(dagster_env: dg.DagsterInstance, simulator: Simulator) -> None:
    # Defaults are what the launchpad shows.
    fields = (
        defs.resolve_job_def("batch_job")
        .run_config_schema.config_type.fields["ops"]
        .config_type.fields["batch_images"]
        .config_type.fields["config"]
        .config_type.fields
    )
    assert {name: fields[name].default_value for name in ("model", "max_cost_usd", "dry_run")} == {
        "model": None,
        "max_cost_usd": None,
        "dry_run": False,
    }

    dry = _launch(dagster_env, dry_run=True, rendering_speed="QUALITY")
    assert dry.success and dry.asset_materializations_for_node("batch_images") == []
    (observation,) = dry.asset_observations_for_node("batch_images")
    assert observation.metadata["estimated_cost_usd"].value == pytest.approx(0.18)
    assert observation.metadata["overrides"].value == "rendering_speed=QUALITY"
    assert simulator.stats.billed_images == 0  # dry-run quotes are free

    refused = _launch(dagster_env, max_cost_usd=0.10, rendering_speed="QUALITY")
    assert not refused.success
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert "above max_cost_usd $0.10" in failure.step_failure_data.user_failure_data.description
    assert simulator.stats.billed_images == 0  # dry-run quotes are free

    ran = _launch(dagster_env, model="V_2_TURBO", style_type="DESIGN", max_cost_usd=0.10)
    assert ran.success
    metadata = ran.asset_materializations_for_node("batch_images")[0].metadata
    assert metadata["run_stored"].value == metadata["batch_stored"].value == 2
    assert metadata["estimated_cost_usd"].value == pytest.approx(0.10)
    assert simulator.stats.billed_usd == pytest.approx(0.10)
    assert "V_2_TURBO" in metadata["first_rows"].value


@pytest.mark.slow
def test_cli_dry_run_and_max_cost(
    dagster_env: dg.DagsterInstance,
    simulator: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "cli_home").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "cli_home"))
    csv = tmp_path / "prompts" / "launch.csv"
    dry = CliRunner().invoke(main, ["run", str(csv), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "nothing sent" in dry.output and "estimated cost         $0.09" in dry.output
    too_much = CliRunner().invoke(main, ["run", str(csv), "--max-cost", "0.05"])
    assert too_much.exit_code != 0
    assert "refused before sending anything" in too_much.output
    assert simulator.stats.billed_images == 0  # dry-run quotes are free
    ok = CliRunner().invoke(main, ["run", str(csv), "--max-cost", "1"])
    assert ok.exit_code == 0, ok.output
    assert "estimated cost" in ok.output and "$0.09" in ok.output
    bad = CliRunner().invoke(main, ["run", str(csv), "--max-cost", "-1"])
    assert bad.exit_code != 0 and "--max-cost" in bad.output

"""The Dagster UI in a real browser: Playwright drives Debian's Chromium against `dagster dev`.

Nothing is faked: `dagster dev` runs the repository's workspace.yaml on a temporary SQLite
instance (the repository's dagster.yaml), the batch runs in the daemon's run worker with the
embedded Ideogram simulator (no API key), and every step is a click a person would make:
the asset graph, the asset's Materialize dialog with its partition picker, the run page, the
asset page with the materialization's metadata. Screenshots land in test-artifacts/ui/.

The prompts sensor is stopped (through the webserver's GraphQL API, before the CSV appears)
so that the run under test is the one launched from the dialog.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ideogram_pipeline.definitions import defs
from tests.deploy_support import (
    REPO,
    dagster_bin,
    free_port,
    graphql,
    service_env,
    service_missing,
    services,
    wait_for,
)

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts" / "ui"
#: What this machine needs: no sandbox as root, and nothing that reaches for the network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PARTITION = "ui-batch"
CSV = (
    "prompt,seed,num_images\n"
    "A red fox in fresh snow,1,1\n"
    "A lighthouse at dusk,2,2\n"
    "Two paper boats on a puddle [sim:unsafe],3,1\n"
)
LOCATION = "ideogram_pipeline.definitions"
SENSOR_STATE = """
query ($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  ... on Sensor { sensorState { id status ticks(limit: 5) { status } } } } }
"""
STOP_SENSOR = """
mutation ($id: String!) { stopSensor(id: $id) {
  ... on StopSensorMutationResult { instigationState { status } } } }
"""
RUNS = """
{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }
"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        service_missing(
            "Chromium is not installed (apt-get install chromium; scripts/ensure_chromium.sh "
            "does it when run as root)"
        )
    return path


def _stop_sensor(port: int) -> None:
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "sensorName": "prompts_sensor",
    }
    state = graphql(port, SENSOR_STATE, {"selector": selector})["sensorOrError"]["sensorState"]
    stopped = graphql(port, STOP_SENSOR, {"id": state["id"]})["stopSensor"]
    assert stopped["instigationState"]["status"] == "STOPPED"

    def settled() -> bool:
        now = graphql(port, SENSOR_STATE, {"selector": selector})["sensorOrError"]
        return all(tick["status"] != "STARTED" for tick in now["sensorState"]["ticks"])

    wait_for("the sensor's last tick to finish", settled)


def _downstream(start: dg.AssetKey) -> tuple[set[str], int]:
    """The keys downstream of ``start`` (itself included) and the longest path's length."""
    graph = defs.get_repository_def().asset_graph
    depth: dict[dg.AssetKey, int] = {}
    todo = [(start, 0)]
    while todo:
        key, hops = todo.pop()
        if depth.get(key, -1) < hops:
            depth[key] = hops
            todo.extend((child, hops + 1) for child in graph.get(key).child_keys)
    return {key.to_user_string() for key in depth}, max(depth.values())


def _ui_run(port: int) -> dict[str, Any] | None:
    runs = graphql(port, RUNS)["runsOrError"]["results"]
    for run in runs:
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        if tags.get("dagster/partition") == PARTITION:
            return dict(run)
    return None


def test_launch_a_batch_from_the_ui(tmp_path: Path) -> None:
    try:
        from playwright import sync_api
    except ImportError:
        service_missing("Playwright is not installed (it comes with the test extras)")
    chromium = _chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    home = tmp_path / "home"
    home.mkdir()
    # The repository's instance config, minus the newsletter pop-up a first visit shows.
    (home / "dagster.yaml").write_text(
        (REPO / "dagster.yaml").read_text() + "\nnux:\n  enabled: false\n", encoding="utf-8"
    )
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("batches", [PARTITION])
    asset_graph = defs.get_repository_def().asset_graph
    all_keys = sorted(key.to_user_string() for key in asset_graph.get_all_asset_keys())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        DAGSTER_HOME=str(home),
        IDEOGRAM_PROMPTS_DIR=str(prompts),
        IDEOGRAM_STORAGE=str(tmp_path / "storage"),
        IDEOGRAM_SIMULATOR_LATENCY="0",
        IDEOGRAM_SIMULATOR_IMAGE_SCALE="0.25",
    )

    with services() as start:
        dev = start(
            "dagster-dev",
            [dagster_bin("dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(port)],
            env=env, cwd=REPO, log_dir=logs,
        )  # fmt: skip
        wait_for("dagster dev", lambda: graphql(port, "{ version }"), watch=[dev])
        _stop_sensor(port)
        (prompts / f"{PARTITION}.csv").write_text(CSV, encoding="utf-8")

        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(60_000)
                expect = sync_api.expect
                expect.set_options(timeout=30_000)

                # 1. The asset graph: every asset of the code location, by group.
                page.goto(f"{base}/asset-groups")
                groups = page.locator('button[style*="width: 18px"]')  # the tree's arrows
                expect(groups.first).to_be_visible()
                for index in range(groups.count()):
                    groups.nth(index).click()
                for key in all_keys:
                    expect(page.get_by_text(key, exact=True).first).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / "01-asset-groups.png"))

                # ... and the batch asset's lineage, drawn as a graph.
                downstream, depth = _downstream(dg.AssetKey("batch_images"))
                page.goto(
                    f"{base}/assets/batch_images?view=lineage&lineageScope=downstream"
                    f"&lineageDepth={max(depth, 1)}"
                )
                for key in sorted(downstream):
                    expect(page.locator(f'[data-tooltip="{key}"]').first).to_be_visible()
                expect(page.get_by_text("Loading...")).to_have_count(0)
                page.screenshot(path=str(ARTIFACTS / "02-asset-graph.png"))

                # 2. Launch the partition from the asset's Materialize dialog.
                page.goto(f"{base}/assets/batch_images")
                page.get_by_role("button", name="Materialize…").first.click()
                page.get_by_text("Select a partition or create one").click()
                page.get_by_role("menuitem").filter(has_text=PARTITION).click()
                dialog = page.locator(".bp5-dialog")
                expect(dialog).to_contain_text("1 partition")
                expect(
                    page.locator(".dagster-popover").get_by_role("checkbox").last
                ).to_be_checked()
                launch = dialog.get_by_role("button", name="Launch 1 run")
                expect(launch).to_be_enabled()
                page.screenshot(path=str(ARTIFACTS / "03-materialize-dialog.png"))
                launch.click()

                # 3. The run ends green, on its own page.
                run = wait_for("the run launched from the dialog", lambda: _ui_run(port))
                page.goto(f"{base}/runs/{run['runId']}")
                expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=150_000)
                page.screenshot(path=str(ARTIFACTS / "04-run-success.png"))

                # 4. The materialization's metadata on the asset page.
                page.goto(f"{base}/assets/batch_images?partition={PARTITION}")
                table = page.locator("table").filter(has_text="cost_usd").first
                expect(table).to_be_visible()
                # The batch's totals beside what this run did.
                for name in (
                    "rows",
                    "batch_stored",
                    "batch_cost_usd",
                    "run_stored",
                    "run_unsafe",
                    "run_cost_usd",
                    "first_rows",
                ):
                    expect(table.get_by_text(name, exact=True).first).to_be_visible()
                expect(table).to_contain_text("0.24")  # 4 V_3 images at $0.06
                expect(table).to_contain_text("SIMULATED")
                page.screenshot(path=str(ARTIFACTS / "05-asset-metadata.png"))
                first_rows = table.locator("tr").filter(has_text="first_rows")
                first_rows.scroll_into_view_if_needed()
                # The first rows render as a table: each CSV row with its status.
                expect(first_rows).to_contain_text("A red fox in fresh snow")
                expect(first_rows).to_contain_text("unsafe")
                expect(table.locator("tr").filter(has_text="estimated_cost_usd")).to_contain_text(
                    "0.24"
                )
                page.screenshot(path=str(ARTIFACTS / "06-asset-metadata-more.png"))
            except BaseException:
                page.screenshot(path=str(ARTIFACTS / "failure.png"))
                raise
            finally:
                browser.close()

    with dg.DagsterInstance.from_config(str(home)) as instance:
        record = instance.get_run_by_id(run["runId"])
        assert record is not None and record.status == dg.DagsterRunStatus.SUCCESS
        assert "dagster/sensor_name" not in record.tags  # launched from the dialog
        event = instance.get_latest_materialization_event(dg.AssetKey("batch_images"))
        assert event is not None and event.run_id == run["runId"]
        metadata = event.asset_materialization.metadata
        assert (
            metadata["rows"].value,
            metadata["run_stored"].value,
            metadata["run_unsafe"].value,
        ) == (3, 3, 1)
        assert (metadata["batch_stored"].value, metadata["batch_unsafe"].value) == (3, 1)

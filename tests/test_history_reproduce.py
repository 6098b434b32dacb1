"""Reproduction and exact-duplicate linking, on a local and an S3 root, plus the Dagster path.

Real components: batches through the engine against the bundled simulator (deterministic:
the same request and seed give the same bytes), a temporary folder or a SeaweedFS bucket,
DuckDB, and for the last test a real Dagster instance in a temporary DAGSTER_HOME. The
simulator's billing counter (``stats.billed_images``) proves what was and was not paid.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.reproduce import ReproduceError, plan, reproduce
from ideogram_pipeline.images.png_metadata import read_metadata
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.history_support import Root, make_root

ORIGINAL = (
    "prompt,seed,num_images,style_type,aspect_ratio,magic_prompt,tags\n"
    "A copper kettle on a stove,31,,AUTO,,ON,kitchen\n"  # AUTO style: reported as resolved
    "Two herons in a misty marsh,32,2,,16:9,,birds\n"
    "A kite over the dunes,,,,,,\n"  # random seed
)


@pytest.fixture(scope="module")
def simulator() -> Simulator:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        yield sim


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, simulator: Simulator, tmp_path: Path) -> Root:
    return make_root(request.param, simulator, request, tmp_path / "root")


def _plan(root: Root, **kwargs) -> list:
    con = history.connect(root.settings, root.store)
    try:
        return plan(con, **kwargs)
    finally:
        con.close()


@pytest.mark.slow
def test_reproduce_is_byte_identical_and_linked(root: Root, simulator: Simulator) -> None:
    root.run("original", ORIGINAL)
    kettle = root.records("row = 1")[0]
    assert kettle["style_type"] != "AUTO"  # the record holds the style Ideogram chose
    heron_1 = root.records("row = 2 AND image_index = 1")[0]
    [kite] = root.records("row = 3")
    assert kite["requested_seed"] is None and kite["seed"] is not None  # seed picked by the API

    planned = _plan(root, ids=[kettle["id"], heron_1["id"], kite["id"]], tags=["again"])
    # The second image of a two-image request: both images are regenerated and linked.
    assert [item.request.num_images for item in planned] == [1, 2, 1]
    billed = simulator.stats.billed_images
    result = reproduce(root.settings, root.store, planned, label="ids")
    assert simulator.stats.billed_images == billed + 4  # reproduction is paid: never linked
    items = {item.source_id: item for item in result.items}
    assert len(items) == 4 and {kettle["id"], heron_1["id"], kite["id"]} <= set(items)
    assert all(item.identical and item.distance == 0 for item in result.items)

    [new] = root.records("id = ?", [items[kettle["id"]].new_id])
    assert new["reproduced_from"] == kettle["id"] and new["tags"] == ["again"]
    assert new["batch"] == result.batch
    assert re.fullmatch(r"reproduce-ids-\d{8}-\d{6}-[0-9a-f]{6}", result.batch)  # readable key
    assert new["request_hash"] == kettle["request_hash"]  # the very same request was sent
    assert new["download_sha256"] == kettle["download_sha256"]
    assert new["sha256"] != kettle["sha256"]  # stored bytes name their own record
    embedded = read_metadata(root.store.get_bytes(new["image_key"]))["record"]
    assert embedded["id"] == new["id"] and embedded["reproduced_from"] == kettle["id"]


@pytest.mark.slow
def test_reproduce_cli_by_id_prefix_and_batch(simulator: Simulator, tmp_path: Path) -> None:
    root = make_root("local", simulator, None, tmp_path / "root")
    root.run("original", ORIGINAL)
    runner = CliRunner(env=root.env)
    kettle = root.records("row = 1")[0]
    result = runner.invoke(main, ["reproduce", kettle["id"][:10], "--tag", "check"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 compared image(s) byte-identical" in result.output
    assert root.query(
        "SELECT count(*) FROM generations WHERE reproduced_from = ? AND list_contains(tags, ?)",
        [kettle["id"], "check"],
    ) == [(1,)]

    dry = runner.invoke(main, ["reproduce", "--batch", "original", "--dry-run"])
    assert dry.exit_code == 0 and "3 request(s), 4 image(s)" in dry.output
    whole = runner.invoke(main, ["reproduce", "--batch", "original", "--format", "json"])
    assert whole.exit_code == 0, whole.output
    assert "4 of 4 compared image(s) byte-identical" in whole.output

    for args, needle in [
        (["reproduce"], "not both or neither"),
        (["reproduce", "abc"], "too short"),
        (["reproduce", "0" * 32], "no record"),
        (["reproduce", "--batch", "nothing-here"], "no stored images"),
    ]:
        bad = runner.invoke(main, args)
        assert bad.exit_code != 0 and needle in bad.output, (args, bad.output)


def test_unsafe_records_cannot_be_reproduced(simulator: Simulator, tmp_path: Path) -> None:
    root = make_root("local", simulator, None, tmp_path / "root")
    root.run("unsafe", "prompt,seed\nA storm [sim:unsafe],5\n")
    [record] = root.records("true")
    with pytest.raises(ReproduceError, match="unsafe"):
        _plan(root, ids=[record["id"]])


@pytest.mark.slow
def test_exact_duplicates_are_linked_not_paid(root: Root, simulator: Simulator) -> None:
    root.run("first", ORIGINAL)
    originals = {r["row"]: r for r in root.records("batch = 'first' AND image_index = 0")}
    copy = (
        "prompt,seed,num_images,style_type,aspect_ratio,magic_prompt,tags\n"
        "A copper kettle on a stove,31,,AUTO,,ON,copy\n"  # same request: linked
        "Two herons in a misty marsh,32,2,,16:9,,\n"  # same request, two images: linked
        "A copper kettle on a stove,,,AUTO,,ON,\n"  # random seed: a new request, paid
        "A copper kettle on a stove,99,,AUTO,,ON,\n"  # another seed: paid
    )
    billed = simulator.stats.billed_images
    summary = root.run("second", copy)
    assert simulator.stats.billed_images == billed + 2
    assert (summary.linked, summary.stored, summary.cost_usd) == (2, 5, pytest.approx(0.12))
    linked = {
        (r["row"], r["image_index"]): r
        for r in root.records("batch = 'second' AND duplicate_of IS NOT NULL")
    }
    assert sorted(linked) == [(1, 0), (2, 0), (2, 1)]
    kettle = linked[(1, 0)]
    assert kettle["duplicate_of"] == originals[1]["id"] and kettle["status"] == "stored"
    assert kettle["cost_usd"] == 0.0 and kettle["tags"] == ["copy"]
    assert (kettle["stored_uri"], kettle["sha256"]) == (
        originals[1]["stored_uri"],
        originals[1]["sha256"],
    )
    # A third batch links to the original, never to a link; --force pays again.
    root.run("third", copy)
    [third] = root.records("batch = 'third' AND row = 1")
    assert third["duplicate_of"] == originals[1]["id"]
    billed = simulator.stats.billed_images
    forced = root.run("forced", "\n".join(copy.splitlines()[:2]) + "\n", force=True)
    assert forced.linked == 0 and simulator.stats.billed_images == billed + 1
    # Only distinct paid images when links are excluded.
    assert root.query(
        "SELECT count(DISTINCT image_key) = count(*) FROM generations "
        "WHERE status = 'stored' AND duplicate_of IS NULL"
    ) == [(True,)]


@pytest.mark.slow
def test_linking_skips_images_that_are_gone(root: Root, simulator: Simulator) -> None:
    root.run("first", "prompt,seed\nA brass bell,41\n")
    [original] = root.records("true")
    root.store.delete([original["image_key"]])  # e.g. removed by retention
    billed = simulator.stats.billed_images
    summary = root.run("second", "prompt,seed\nA brass bell,41\n")
    assert summary.linked == 0 and simulator.stats.billed_images == billed + 1


@pytest.mark.slow
def test_run_force_and_contact_sheet_through_dagster(
    simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = tmp_path / "storage"
    monkeypatch.setenv("IDEOGRAM_API_KEY", simulator.api_key)
    monkeypatch.setenv("IDEOGRAM_BASE_URL", simulator.base_url)
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(storage))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    csv = tmp_path / "seeded.csv"
    csv.write_text("prompt,seed\nA tin robot,51\nA glass owl,52\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(csv)]).exit_code == 0

    billed = simulator.stats.billed_images
    linked = runner.invoke(main, ["run", str(csv), "--batch", "seeded-again"])
    assert linked.exit_code == 0, linked.output
    assert "linked duplicates" in linked.output and simulator.stats.billed_images == billed
    forced = runner.invoke(main, ["run", str(csv), "--batch", "seeded-forced", "--force"])
    assert forced.exit_code == 0, forced.output
    assert simulator.stats.billed_images == billed + 2

    instance = dg.DagsterInstance.get()
    event = instance.get_latest_materialization_event(dg.AssetKey("batch_images"))
    metadata = event.asset_materialization.metadata
    instance.dispose()
    assert metadata["linked_duplicates"].value == 0
    sheet = Path(metadata["contact_sheet"].value)
    assert sheet.is_file() and sheet.is_relative_to(storage / "reports" / "contact_sheets")
    preview = metadata["contact_sheet_preview"].value
    assert preview.startswith("![contact sheet: 2 of 2 images](data:image/jpeg;base64,")
    jpeg = base64.b64decode(preview.split("base64,", 1)[1].rstrip(")"))
    assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) < 100_000

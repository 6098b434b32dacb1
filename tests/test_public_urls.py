"""Delivery through a CDN (issue 19): ``IDEOGRAM_PUBLIC_BASE_URL`` and immutable objects.

Nothing is faked: batches run against the bundled simulator on loopback, the CLI runs in
a child process through a real Dagster instance, DuckDB reads the Delta tables, and the
S3 case stores into SeaweedFS, whose answer to a HEAD request is checked for the header a
CDN caches by.
"""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.search import SearchFilters, search
from ideogram_pipeline.images.png_metadata import read_metadata
from ideogram_pipeline.runs.storing import IMAGE_CACHE_CONTROL
from ideogram_pipeline.settings import SettingsError, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage.public_urls import public_url
from tests.history_support import make_root
from tests.support.cli_runs import RUN, simulator_env, write_batch

BASE = "https://cdn.example.com/gallery"
YEAR_S = 365 * 24 * 3600


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        yield sim


def _stored(settings, store) -> list[dict]:  # type: ignore[no-untyped-def]
    con = history.connect(settings, store)
    try:
        cursor = con.execute(
            "SELECT id, image_key, stored_uri, public_url FROM generations "
            "WHERE status = 'stored' ORDER BY id"
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("", None),
        ("   ", None),
        ("https://cdn.example.com", "https://cdn.example.com"),
        ("https://cdn.example.com/gallery/", BASE),
        ("http://127.0.0.1:8333/bucket//", "http://127.0.0.1:8333/bucket"),
    ],
)
def test_public_base_url_setting(given: str, kept: str | None) -> None:
    assert load_settings({"IDEOGRAM_PUBLIC_BASE_URL": given}).public_base_url == kept


@pytest.mark.parametrize(
    "given",
    [
        "cdn.example.com",
        "ftp://cdn.example.com",
        "https://",
        "https://cdn.example.com/?a=1",
        "https://cdn.example.com/#x",
        "https://cdn.example.com/a b",
    ],
)
def test_public_base_url_refused(given: str) -> None:
    with pytest.raises(SettingsError, match="IDEOGRAM_PUBLIC_BASE_URL"):
        load_settings({"IDEOGRAM_PUBLIC_BASE_URL": given})


def test_public_url_is_base_plus_key() -> None:
    key = "images/2024/05/01/abc.png"
    assert public_url(BASE, key) == f"{BASE}/{key}"
    assert public_url(BASE + "/", key) == f"{BASE}/{key}"
    assert public_url(None, key) is None and public_url(BASE, None) is None


def test_public_urls_everywhere_through_the_cli(simulator: Simulator, tmp_path: Path) -> None:
    """One real ``run`` through Dagster with a public base: the history, the PNG's JSON
    chunk, ``search``, ``export``, ``inspect`` and the asset metadata all carry each
    image's public URL (base + its key under the storage root)."""
    env = simulator_env(simulator, tmp_path, IDEOGRAM_PUBLIC_BASE_URL=BASE + "/")
    batch = write_batch(tmp_path / "cdn.csv", "A lantern number {0} on a quay", 3)
    done = subprocess.run(
        [*RUN, str(batch), "--batch", "cdn"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr + done.stdout

    settings = load_settings(env)
    from ideogram_pipeline.storage import open_store

    store = open_store(settings)
    stored = _stored(settings, store)
    assert len(stored) == 3
    for row in stored:
        assert row["image_key"].startswith("images/")
        assert row["public_url"] == f"{BASE}/{row['image_key']}"
        chunk = read_metadata(Path(row["stored_uri"]).read_bytes())["record"]
        assert chunk is not None and chunk["public_url"] == row["public_url"]
        assert chunk["operation"] == "generate" and "derived_from" not in chunk
    urls = {row["id"]: row["public_url"] for row in stored}

    runner = CliRunner()
    found = runner.invoke(main, ["search", "lantern", "--format", "json"], env=env)
    assert found.exit_code == 0, found.output
    assert {row["id"]: row["public_url"] for row in json.loads(found.output)} == urls

    target = tmp_path / "export"
    exported = runner.invoke(main, ["export", "--where", "true", "--to", str(target)], env=env)
    assert exported.exit_code == 0, exported.output
    with (target / "metadata.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["id"]: row["public_url"] for row in rows} == urls

    first = sorted(urls)[0]
    shown = runner.invoke(main, ["inspect", first[:10]], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"public_url:        {urls[first]}" in shown.output  # the chunk
    assert shown.output.count(urls[first]) == 2  # and the location section
    as_json = json.loads(
        runner.invoke(main, ["inspect", first, "--format", "json"], env=env).output
    )
    assert as_json["location"]["public_url"] == urls[first]

    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        event = instance.get_latest_materialization_event(dg.AssetKey("batch_images"))
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
    finally:
        instance.dispose()
    assert set(metadata["public_url_sample"].value) == set(urls.values())  # type: ignore[arg-type]
    assert metadata["public_url_first"].value in urls.values()
    assert BASE in metadata["first_rows"].value  # type: ignore[operator]


def test_unset_base_implies_nothing_public(simulator: Simulator, tmp_path: Path) -> None:
    """No base: no public URL anywhere. Set later, search and export give images stored
    before it their URL from their key (the history keeps what was recorded)."""
    root = make_root("local", simulator, None, tmp_path / "root")
    assert root.settings.public_base_url is None
    assert root.run("plain", "prompt,seed\nA kite over dunes,5\n").stored == 1
    (row,) = _stored(root.settings, root.store)
    assert row["public_url"] is None
    chunk = read_metadata(Path(row["stored_uri"]).read_bytes())["record"]
    assert chunk is not None and "public_url" not in chunk

    con = history.connect(root.settings, root.store)
    try:
        (hit,) = search(con, SearchFilters(text="kite"))
        assert hit["public_url"] is None
        (later,) = search(con, SearchFilters(text="kite"), public_base_url=BASE)
        assert later["public_url"] == f"{BASE}/{row['image_key']}"
    finally:
        con.close()
    shown = CliRunner().invoke(main, ["inspect", row["id"]], env=root.env)
    assert shown.exit_code == 0, shown.output
    assert "public_url" not in shown.output and "https://" not in shown.output


@pytest.mark.s3
def test_s3_objects_are_immutable_for_a_year_and_public_by_key(
    simulator: Simulator, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On a real S3 server: the object's Cache-Control says immutable and a year, and the
    public URL is the base plus the key under the root (the bucket and prefix are the CDN's
    business, not the URL's)."""
    root = make_root("s3", simulator, request, tmp_path, extra={"IDEOGRAM_PUBLIC_BASE_URL": BASE})
    assert root.run("cdn-s3", "prompt,seed\nA harbour crane at dusk,8\n").stored == 1
    (row,) = _stored(root.settings, root.store)
    assert row["stored_uri"] == f"{root.settings.storage}/{row['image_key']}"
    assert row["public_url"] == f"{BASE}/{row['image_key']}"

    store = root.store
    head = store.client.head_object(  # type: ignore[attr-defined]
        Bucket=store.bucket,  # type: ignore[attr-defined]
        Key=f"{store.prefix}/{row['image_key']}",  # type: ignore[attr-defined]
    )
    cache_control = head["CacheControl"]
    assert cache_control == IMAGE_CACHE_CONTROL
    directives = {part.strip() for part in cache_control.split(",")}
    assert "immutable" in directives and "public" in directives
    assert f"max-age={YEAR_S}" in directives
    assert head["ContentType"] == "image/png"
    chunk = read_metadata(store.get_bytes(row["image_key"]))["record"]
    assert chunk is not None and chunk["public_url"] == row["public_url"]

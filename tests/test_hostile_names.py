"""Names from users are data, not paths: hostile CSV file names through ``ideogram-pipeline run``.

Real components: the CLI (``CliRunner``), Dagster with a temporary ``DAGSTER_HOME``, the
simulator, the local store and SeaweedFS S3, DuckDB for the round trip. Each name becomes
one batch; afterwards every object must sit under the storage root with a safe partition
key, and a query by the original name (``batch_name``) must find exactly its batch.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.cli import main
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import open_store
from ideogram_pipeline.storage.keys import batch_key_for, is_safe_key
from tests.conftest import new_bucket
from tests.support.seaweed import SeaweedServer

#: File stems a user (or an attacker dropping files into prompts/) might choose.
HOSTILE_STEMS = [
    "a=b",
    "batch=evil",  # a Hive partition inside the partition value
    "with space #hash",
    "ünïcödé ✓ 東京",
    "x" * 200,
    ".hidden\ttab\nnewline",  # a leading dot and control characters
]
#: ``--batch`` values: these never come from a file name, so ``/`` and ``..`` are possible.
HOSTILE_OPTIONS = ["../x", "a/b/../../c"]
S3_SUBSET = ["a=b", "with space #hash"]


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as s:
        yield s


@pytest.fixture(params=["local", "s3"])
def settings(
    request: pytest.FixtureRequest, sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    env = {
        "IDEOGRAM_API_KEY": sim.api_key,
        "IDEOGRAM_BASE_URL": sim.base_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "IDEOGRAM_API_MODE": "sync",  # no polling: names are what this test is about
    }
    if request.param == "s3":
        server: SeaweedServer = request.getfixturevalue("s3_server")
        env |= {"IDEOGRAM_STORAGE": f"s3://{new_bucket(server)}/root", **server.env()}
    else:
        env["IDEOGRAM_STORAGE"] = str(tmp_path / "root" / "data")
        for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("IDEOGRAM_PROMPTS_DIR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster_home").mkdir()
    return load_settings(env)


def _run(csv: Path, *extra: str) -> None:
    result = CliRunner().invoke(main, ["run", str(csv), *extra])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_hostile_names_stay_under_the_root_and_round_trip(
    settings: Settings, tmp_path: Path
) -> None:
    stems = S3_SUBSET if settings.is_s3 else HOSTILE_STEMS
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    expected: dict[str, str] = {}  # batch_name -> batch key
    for number, stem in enumerate(stems):
        csv = inbox / f"{stem}.csv"
        csv.write_text(f"prompt\nA lighthouse number {number}\n", encoding="utf-8")
        _run(csv)
        expected[csv.name] = batch_key_for(stem)
    for number, option in enumerate(HOSTILE_OPTIONS[:1] if settings.is_s3 else HOSTILE_OPTIONS):
        csv = inbox / f"option-{number}.csv"
        csv.write_text(f"prompt\nA windmill number {number}\n", encoding="utf-8")
        _run(csv, "--batch", option)
        expected[csv.name] = batch_key_for(option)

    # Every key is safe, distinct, and every stored object is under the root.
    keys = list(expected.values())
    assert len(set(keys)) == len(keys) and all(is_safe_key(key) for key in keys)
    store = open_store(settings)
    objects = [info.key for info in store.list("")]
    assert objects, "nothing was stored"
    for key in objects:
        parts = key.split("/")
        assert ".." not in parts and "" not in parts, key
        assert all(unicodedata.category(c)[0] != "C" for c in key), key
        batch_parts = [p for p in parts if p.startswith("batch=")]
        assert all(is_safe_key(p.removeprefix("batch=")) for p in batch_parts), key
    if settings.is_s3:
        bucket, prefix = settings.storage.removeprefix("s3://").split("/", 1)
        client = store.client  # type: ignore[attr-defined]
        every = client.list_objects_v2(Bucket=bucket)["Contents"]
        assert all(item["Key"].startswith(prefix + "/") for item in every)
    else:
        root = Path(settings.storage).resolve()
        assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["data"]
        for path in root.rglob("*"):
            assert path.resolve().is_relative_to(root), path

    # The original name is kept, and a query by it finds exactly its own batch.
    con = history.connect(settings)
    try:
        for name, key in expected.items():
            found = con.execute(
                "SELECT DISTINCT batch, status FROM generations WHERE batch_name = ?", [name]
            ).fetchall()
            assert found == [(key, "stored")], (name, found)
        total = con.execute("SELECT count(DISTINCT batch) FROM generations").fetchone()
    finally:
        con.close()
    assert total == (len(expected),)

"""A mixed batch end to end through Dagster, the CLI and DuckDB.

Real components throughout: the bundled simulator on loopback (standing in for Ideogram,
with unsafe images, a 422, 5xx, an expired link and 429 pressure from a lower in-flight
limit than the client believes), a real Dagster instance in a temporary DAGSTER_HOME, the
local store on disk, and DuckDB over the written Parquet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.cli import main
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator

SIMULATOR_LIMIT = 3
BATCH_CHECKS = ("rows_accounted_for", "stored_checksums_match")
CLIENT_LIMIT = 6  # the client believes the account allows more than it does: 429s follow

MIXED_ROWS = [
    ("A red fox in fresh snow, morning light", "", ""),  # 1 stored
    ("Two paper boats on a puddle [sim:unsafe]", "", ""),  # 2 unsafe (billed)
    ("A crowded market at night [sim:422]", "", ""),  # 3 failed: safety check
    ("A glass greenhouse full of orchids [sim:503x2]", "", ""),  # 4 stored after 2 retries
    ("A lighthouse in a storm [sim:expired]", "", ""),  # 5 failed: link expired
    ("An owl on a fence post", "99999999999", ""),  # 6 rejected: seed out of range
    ("A watercolour of a harbour", "7", "V_2_TURBO"),  # 7 stored via legacy /generate
] + [(f"A minimalist poster of the number {n}", str(n), "") for n in range(8, 21)]


def _write_batch(path: Path) -> Path:
    lines = ["prompt,seed,model,num_images,tags"]
    for number, (prompt, seed, model) in enumerate(MIXED_ROWS, start=1):
        images = "2" if number == 1 else ""
        lines.append(f'"{prompt}",{seed},{model},{images},e2e|row{number}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    config = SimulatorConfig(
        latency_s=0.05, max_inflight=SIMULATOR_LIMIT, image_scale=0.25, url_ttl_s=60
    )
    with running_simulator(config) as sim:
        yield sim


@pytest.fixture
def env(tmp_path: Path, simulator: Simulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    storage = tmp_path / "storage"
    for name in ("AWS_ENDPOINT_URL", "IDEOGRAM_PROMPTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDEOGRAM_API_KEY", simulator.api_key)
    monkeypatch.setenv("IDEOGRAM_BASE_URL", simulator.base_url)
    monkeypatch.setenv("IDEOGRAM_MAX_INFLIGHT", str(CLIENT_LIMIT))
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(storage))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    return storage


def _query(sql: str, params: list | None = None) -> list[tuple]:
    con = history.connect(load_settings())
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("api_mode", ["sync", pytest.param("async", marks=pytest.mark.slow)])
def test_mixed_batch_through_dagster(
    env: Path, simulator: Simulator, tmp_path: Path, api_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sync``: the v1 endpoints (multipart v3, JSON legacy), validated against the published
    spec; ``async``: Ideogram's v2 API with generation ids polled, legacy rows on v1."""
    monkeypatch.setenv("IDEOGRAM_API_MODE", api_mode)
    csv = _write_batch(tmp_path / "mixed batch.csv")
    result = CliRunner().invoke(main, ["run", str(csv), "--batch", "mixed"])
    assert result.exit_code == 0, result.output

    # Every CSV row is accounted for, with the status its scenario calls for.
    statuses = dict(
        _query("SELECT row, string_agg(DISTINCT status, ',') FROM generations GROUP BY row")
    )
    assert sorted(statuses) == list(range(1, len(MIXED_ROWS) + 1))
    assert statuses[1] == "stored" and statuses[4] == "stored" and statuses[7] == "stored"
    assert statuses[2] == "unsafe"
    assert (statuses[3], statuses[5], statuses[6]) == ("failed", "failed", "rejected")
    errors = dict(_query("SELECT row, error FROM generations WHERE error IS NOT NULL"))
    assert "safety check" in errors[3]
    assert "expired" in errors[5]
    assert "seed" in errors[6] and "row 6" in errors[6]
    assert _query("SELECT count(*) FROM generations WHERE row = 1")[0][0] == 2  # num_images 2
    with_ids = _query("SELECT count(*) FROM generations WHERE generation_id IS NOT NULL")[0][0]
    assert (with_ids > 0) == (api_mode == "async")  # v2 answers carry generation ids

    # Stored files are exactly what was recorded.
    stored = _query("SELECT stored_uri, sha256, size_bytes FROM generations WHERE status='stored'")
    assert len(stored) == 2 + 1 + 1 + 13
    for uri, digest, size in stored:
        data = Path(uri).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest and len(data) == size
        assert Path(uri).is_relative_to(env / "images")

    # The simulator never saw an invalid request nor more images in flight than its limit,
    # and the 429 pressure was real.
    stats = simulator.stats
    assert stats.invalid_requests == []
    assert stats.max_images_inflight_seen <= SIMULATOR_LIMIT
    assert stats.rate_limited > 0

    # The summary is printed, the run is recorded in the Dagster instance.
    assert "stored" in result.output and "cost" in result.output
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert runs[0].tags.get("dagster/partition") == "mixed"
    event = instance.get_latest_materialization_event(dg.AssetKey("batch_images"))
    assert event is not None
    metadata = event.asset_materialization.metadata
    assert metadata["run_stored"].value == metadata["batch_stored"].value == 17
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("batch_images"), name) for name in BATCH_CHECKS]
    )
    assert {key.name: execution.status.value for key, execution in checks.items()} == {
        name: "SUCCEEDED" for name in BATCH_CHECKS
    }
    instance.dispose()

    # A re-run pays nothing for rows already stored or unsafe.
    billed_before = dict(stats.billed_by_prompt_seed)
    rerun = CliRunner().invoke(main, ["run", str(csv), "--batch", "mixed"])
    assert rerun.exit_code == 0, rerun.output
    repaid = {
        key: count - billed_before.get(key, 0)
        for key, count in stats.billed_by_prompt_seed.items()
        if count != billed_before.get(key, 0)
    }
    # Only the expired-link row is generated (and billed) again: it failed, so it is retried.
    assert [prompt for prompt, _seed in repaid] == ["A lighthouse in a storm [sim:expired]"]
    assert _query("SELECT count(*) FROM generations WHERE status = 'stored'")[0][0] == 17
    assert "skipped already done" in rerun.output


def test_query_formats(env: Path, tmp_path: Path) -> None:
    csv = tmp_path / "tiny.csv"
    csv.write_text("prompt\nA small blue teapot\n", encoding="utf-8")
    assert CliRunner().invoke(main, ["run", str(csv)]).exit_code == 0
    sql = "SELECT row, status, batch FROM generations"
    as_json = CliRunner().invoke(main, ["query", sql, "--format", "json"])
    assert json.loads(as_json.output) == [{"row": 1, "status": "stored", "batch": "tiny"}]
    as_csv = CliRunner().invoke(main, ["query", sql, "--format", "csv"])
    assert as_csv.output.splitlines() == ["row,status,batch", "1,stored,tiny"]
    bad = CliRunner().invoke(main, ["query", "SELECT nope FROM generations"])
    assert bad.exit_code != 0 and "query failed" in bad.output


def test_bad_files_fail_the_run_with_one_message(env: Path, tmp_path: Path) -> None:
    no_prompt = tmp_path / "no-prompt.csv"
    no_prompt.write_text("text,seed\nhello,1\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(no_prompt)])
    assert result.exit_code != 0 and "prompt" in result.output
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    result = CliRunner().invoke(main, ["run", str(latin1)])
    assert result.exit_code != 0 and "UTF-8" in result.output


@pytest.mark.slow
def test_wrong_api_key_stops_the_batch(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDEOGRAM_API_KEY", "wrong-key-abc")
    csv = tmp_path / "auth.csv"
    csv.write_text("prompt\nA kite\nA second kite\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(csv)])
    assert result.exit_code != 0
    assert "401" in result.output
    assert "wrong-key-abc" not in result.output

"""A batch through Dagster onto a real S3 server (SeaweedFS), queried with DuckDB over S3.

Real components: the bundled simulator on loopback, SeaweedFS on loopback (session
fixture), a temporary Dagster instance, DuckDB with the httpfs extension from PyPI.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.duckdb_s3 import load_extension, load_httpfs
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from tests.conftest import new_bucket
from tests.support.seaweed import SeaweedServer

CSV = (
    "prompt,seed,tags\n"
    "A paper lantern festival over a river,11,s3|e2e\n"
    "A snail on a mossy stone [sim:unsafe],12,s3\n"
    '"An orchard in autumn, ladders against the trees",13,s3\n'
)


@pytest.fixture
def s3_env(
    s3_server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    bucket = new_bucket(s3_server)
    env = {**s3_server.env(), "IDEOGRAM_STORAGE": f"s3://{bucket}/team-a"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return env


@pytest.mark.slow
def test_batch_onto_s3_and_query_over_s3(
    s3_env: dict[str, str], s3_server: SeaweedServer, tmp_path: Path, monkeypatch
) -> None:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        monkeypatch.setenv("IDEOGRAM_API_KEY", sim.api_key)
        monkeypatch.setenv("IDEOGRAM_BASE_URL", sim.base_url)
        csv = tmp_path / "lanterns.csv"
        csv.write_text(CSV, encoding="utf-8")
        result = CliRunner().invoke(main, ["run", str(csv)])
    assert result.exit_code == 0, result.output
    assert "s3://" in result.output

    settings = load_settings()
    con = history.connect(settings)
    rows = con.execute(
        "SELECT row, status, image_key, stored_uri, sha256, size_bytes, id, seed "
        "FROM generations ORDER BY row"
    ).fetchall()
    con.close()
    assert [(r[0], r[1]) for r in rows] == [(1, "stored"), (2, "unsafe"), (3, "stored")]

    client = s3_server.client()
    bucket = s3_env["IDEOGRAM_STORAGE"].split("/")[2]
    for _row, status, image_key, uri, digest, size, record_id, seed in rows:
        if status != "stored":
            continue
        assert uri == f"s3://{bucket}/team-a/{image_key}"
        head = client.head_object(Bucket=bucket, Key=f"team-a/{image_key}", ChecksumMode="ENABLED")
        assert head["ContentType"] == "image/png"
        assert head["CacheControl"] == "public, max-age=31536000, immutable"
        assert head["Metadata"]["record-id"] == record_id
        assert head["Metadata"]["seed"] == str(seed)
        assert head["Metadata"]["batch"] == "lanterns"
        assert head["ContentLength"] == size
        assert "ChecksumSHA256" in head  # the server verified and kept the checksum
        body = client.get_object(Bucket=bucket, Key=f"team-a/{image_key}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest

    # The history is two Delta tables whose data files are Hive-partitioned Parquet.
    listed = client.list_objects_v2(Bucket=bucket, Prefix="team-a/history/")["Contents"]
    for table in ("generations", "generation_records"):
        keys = [o["Key"] for o in listed if o["Key"].startswith(f"team-a/history/{table}/")]
        data = [k for k in keys if k.endswith(".parquet") and "/_delta_log/" not in k]
        assert data and all("/date=" in k and "/batch=lanterns/" in k for k in data)
        assert any("/_delta_log/" in k for k in keys)

    # duckdb-init prints SQL that a fresh DuckDB client can run as is (after filling in keys).
    init = CliRunner().invoke(main, ["duckdb-init"])
    assert init.exit_code == 0
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in init.output
    sql = init.output.replace("<AWS_ACCESS_KEY_ID>", s3_env["AWS_ACCESS_KEY_ID"]).replace(
        "<AWS_SECRET_ACCESS_KEY>", s3_env["AWS_SECRET_ACCESS_KEY"]
    )
    fresh = duckdb.connect()
    load_httpfs(fresh)  # the offline stand-in for INSTALL httpfs and delta
    load_extension(fresh, "delta")
    for name in ("httpfs", "delta"):
        sql = sql.replace(f"INSTALL {name};", "").replace(f"LOAD {name};", "")
    fresh.execute(sql)
    assert fresh.execute("SELECT count(*) FROM generations").fetchone() == (3,)
    with_keys = CliRunner().invoke(main, ["duckdb-init", "--with-credentials"])
    assert s3_env["AWS_SECRET_ACCESS_KEY"] in with_keys.output


def test_wrong_credentials_stop_before_any_api_call(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        monkeypatch.setenv("IDEOGRAM_API_KEY", sim.api_key)
        monkeypatch.setenv("IDEOGRAM_BASE_URL", sim.base_url)
        csv = tmp_path / "denied.csv"
        csv.write_text(CSV, encoding="utf-8")
        result = CliRunner().invoke(main, ["run", str(csv)])
        assert sim.stats.requests_total == 0  # nothing was spent
    assert result.exit_code != 0
    assert "credentials" in result.output
    assert "not-the-secret" not in result.output


def test_missing_bucket_is_named(s3_env: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("IDEOGRAM_STORAGE", "s3://no-such-bucket-here/x")
    csv = tmp_path / "nobucket.csv"
    csv.write_text(CSV, encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(csv)])
    assert result.exit_code != 0 and "no-such-bucket-here" in result.output

"""Secrets never leak: not into output, logs, the Dagster instance, S3 objects or PNG chunks.

Real components: the simulator configured with a distinctive API key (so the pipeline runs
in "real API" mode with that key), SeaweedFS S3 with its own random secret, Dagster with a
temporary SQLite ``DAGSTER_HOME``, the CLI in-process. A successful batch, two failing ones
(a wrong API key: 401; a wrong AWS secret: storage refused) and the read-side commands run;
then every byte they left behind is searched for every secret: all files under
``DAGSTER_HOME`` (SQLite rows included, zlib-compressed snapshots decompressed), every object
in the bucket (Parquet string columns read with pyarrow, PNG text chunks decoded, object
metadata), exported and report files, captured stdout/stderr and every log record at DEBUG.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sqlite3
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ideogram_pipeline.cli import main
from ideogram_pipeline.defs.resources import build_resources
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from tests.conftest import new_bucket
from tests.support.hostile_host import HostileImageHost
from tests.support.seaweed import SeaweedServer

API_KEY = f"ideo-live-{uuid.uuid4().hex}"
WRONG_API_KEY = f"ideo-wrong-{uuid.uuid4().hex}"
WRONG_AWS_SECRET = f"aws-wrong-{uuid.uuid4().hex}"

GOOD_ROWS = [
    "prompt,model,seed,tags",
    "A paper crane on a desk,,7,secret-test",
    "A tide pool at noon [sim:unsafe],,,",
    "A crowded market [sim:422],,,",
    "A lighthouse in fog [sim:expired],,,",
    "A fox in snow [sim:foreign-url],,,",
    "A copper kettle [sim:not-png],,,",
    "A rainy street [sim:corrupt],,,",
    "A watercolour harbour,V_2_TURBO,3,",
]


# -- where secrets could hide --------------------------------------------------------------------


def _png_texts(data: bytes) -> Iterator[bytes]:
    """The payload of every text chunk (tEXt, zTXt, iTXt), decompressed."""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            yield body
        elif kind == b"zTXt":
            yield zlib.decompress(body.split(b"\0", 1)[1][1:])
        elif kind == b"iTXt":
            keyword, rest = body.split(b"\0", 1)
            compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
            yield keyword + (zlib.decompress(text) if compressed else text)


def _sqlite_values(path: Path) -> Iterator[bytes]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):  # names from sqlite itself
                for value in row:
                    if isinstance(value, str):
                        yield value.encode("utf-8", "surrogatepass")
                    elif isinstance(value, bytes):
                        yield value
                        with contextlib.suppress(zlib.error):
                            yield zlib.decompress(value)
    finally:
        con.close()


def _blobs(name: str, data: bytes) -> Iterator[bytes]:
    """``data`` itself and every decoded form of it worth searching."""
    yield data
    if data.startswith(b"\x89PNG"):
        yield from _png_texts(data)
    if data.startswith(b"PAR1"):
        table = pq.read_table(io.BytesIO(data))
        for column in table.columns:
            if pa.types.is_string(column.type) or pa.types.is_list(column.type):
                yield repr(column.to_pylist()).encode("utf-8", "surrogatepass")
    with contextlib.suppress(zlib.error):
        yield zlib.decompress(data)


def _file_blobs(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for blob in _blobs(path.name, data):
            yield str(path), blob
        if data.startswith(b"SQLite format 3\0"):
            for value in _sqlite_values(path):
                yield f"{path} (sqlite row)", value


def _bucket_blobs(server: SeaweedServer, bucket: str) -> Iterator[tuple[str, bytes]]:
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            response = client.get_object(Bucket=bucket, Key=item["Key"])
            where = f"s3://{bucket}/{item['Key']}"
            yield f"{where} (metadata)", repr(response.get("Metadata", {})).encode()
            for blob in _blobs(item["Key"], response["Body"].read()):
                yield where, blob


# -- the runs ------------------------------------------------------------------------------------


def _invoke(outputs: list[str], *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, list(args))
    text = result.output + (repr(result.exception) if result.exception else "")
    outputs.append(text)
    assert (result.exit_code == 0) is ok, text
    return text


@pytest.mark.slow
def test_secrets_never_leak(
    s3_server: SeaweedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every record of every library (botocore included)
    bucket = new_bucket(s3_server)
    home = tmp_path / "dagster_home"
    home.mkdir()
    csv = tmp_path / "secret-test.csv"
    csv.write_text("\n".join(GOOD_ROWS) + "\n", encoding="utf-8")
    outputs: list[str] = []
    commands = set(main.commands)  # type: ignore[attr-defined]

    config = SimulatorConfig(api_key=API_KEY, image_scale=0.25)
    with running_simulator(config, image_host=HostileImageHost()) as sim:
        for name in ("IDEOGRAM_PROMPTS_DIR", "IDEOGRAM_API_MODE"):
            monkeypatch.delenv(name, raising=False)
        env = {
            "IDEOGRAM_API_KEY": API_KEY,
            "IDEOGRAM_BASE_URL": sim.base_url,
            "IDEOGRAM_STORAGE": f"s3://{bucket}/root",
            "DAGSTER_HOME": str(home),
            **s3_server.env(),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        # Secrets reach Dagster's resources only as the names of variables.
        s3_resource = build_resources()["s3"]
        assert isinstance(s3_resource.aws_secret_access_key, dg.EnvVar)  # type: ignore[attr-defined]

        summary = _invoke(outputs, "run", str(csv))
        assert "stored" in summary and "failed" in summary

        monkeypatch.setenv("IDEOGRAM_API_KEY", WRONG_API_KEY)
        assert "401" in _invoke(outputs, "run", str(csv), "--batch", "wrong-key", ok=False)
        monkeypatch.setenv("IDEOGRAM_API_KEY", API_KEY)

        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_AWS_SECRET)
        refused = _invoke(outputs, "run", str(csv), "--batch", "wrong-aws", ok=False)
        assert "SignatureDoesNotMatch" in refused or "rejected" in refused
        _invoke(outputs, "query", "SELECT count(*) FROM generations", ok=False)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)

        _invoke(outputs, "query", "SELECT * FROM generation_records", "--format", "csv")
        _invoke(outputs, "query", "SELECT * FROM generations", "--format", "json")
        if "report" in commands:
            _invoke(outputs, "report", "--out", str(tmp_path / "report"))
        if "export" in commands:
            _invoke(outputs, "export", "--where", "true", "--to", str(tmp_path / "export"))
        stored_id = _invoke(
            outputs,
            "query",
            "SELECT id FROM generations WHERE status = 'stored' LIMIT 1",
            "--format",
            "csv",
        ).splitlines()[1]
        url = _invoke(outputs, "share", stored_id, "--expires", "60")
        assert "X-Amz-Signature=" in url and s3_server.access_key in url

    captured = capfd.readouterr()
    texts = [*outputs, captured.out, captured.err]
    texts += [f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    secrets = {
        "IDEOGRAM_API_KEY": API_KEY,
        "the wrong API key": WRONG_API_KEY,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "the wrong AWS secret": WRONG_AWS_SECRET,
    }
    places: list[tuple[str, bytes]] = [("output/log", t.encode()) for t in texts]
    places += list(_file_blobs(home))
    places += list(_file_blobs(tmp_path / "report")) if (tmp_path / "report").exists() else []
    places += list(_file_blobs(tmp_path / "export")) if (tmp_path / "export").exists() else []
    places += list(_bucket_blobs(s3_server, bucket))
    places.append((str(s3_server.log_path), s3_server.log_path.read_bytes()))

    leaks = [
        f"{label} in {where}"
        for where, blob in places
        for label, secret in secrets.items()
        if secret.encode() in blob
    ]
    assert not leaks, leaks
    # The scan did look at real content: the run's records, images and Dagster events.
    joined = b"\n".join(blob for _, blob in places)
    assert b"A paper crane on a desk" in joined and b"IHDR" in joined
    assert b"HTTP 401" in joined and len(caplog.records) > 100

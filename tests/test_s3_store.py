"""The object-store contract on a local folder and on S3, plus DuckDB and pyarrow over S3.

Nothing is mocked: S3 is a real SeaweedFS server on loopback (session fixture ``s3_server``),
and "the server rejects a wrong checksum" is asserted against that server. botocore event
hooks only *observe* requests (to count DeleteObjects calls and see the 412s).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import botocore.exceptions
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs
import pyarrow.parquet as pq
import pytest

from ideogram_pipeline.history.duckdb_s3 import (
    configure_duckdb_s3,
    duckdb_init_sql,
    extension_path,
)
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.storage import (
    LocalStore,
    ObjectExists,
    ObjectStore,
    StorageError,
    StoragePreflightError,
    open_store,
)
from ideogram_pipeline.storage.s3 import S3Store
from tests.support.seaweed import SeaweedServer

IMMUTABLE = "public, max-age=31536000, immutable"
PNG = b"\x89PNG\r\n\x1a\n"


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "root")
    return open_store(request.getfixturevalue("s3_settings"))


@pytest.fixture
def s3_store(s3_settings: Settings) -> S3Store:
    store = open_store(s3_settings)
    assert isinstance(store, S3Store)
    return store


def record_calls(store: S3Store, operation: str) -> list[int]:
    """HTTP statuses of every ``operation`` request the store's client makes."""
    statuses: list[int] = []

    def after_call(http_response: Any, **_: Any) -> None:
        statuses.append(http_response.status_code)

    store.client.meta.events.register(f"after-call.s3.{operation}", after_call)
    return statuses


# -- the contract, on both stores -----------------------------------------------------------


def test_round_trip(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    image = PNG + os.urandom(2000)
    store.put_bytes("images/ab/cd.png", image, content_type="image/png", cache_control=IMMUTABLE)
    store.put_bytes("images/ef.png", b"two", content_type="image/png")
    store.put_bytes("metadata/x.parquet", b"three")

    assert store.get_bytes("images/ab/cd.png") == image
    info = store.head("images/ab/cd.png")
    assert info is not None and info.key == "images/ab/cd.png" and info.size == len(image)
    assert abs(info.last_modified - time.time()) < 120
    assert store.head("images/missing.png") is None
    assert {o.key for o in store.list("images/")} == {"images/ab/cd.png", "images/ef.png"}
    assert {o.key for o in store.list("")} >= {"images/ef.png", "metadata/x.parquet"}

    store.put_bytes("images/ef.png", b"replaced")  # plain writes replace (metadata files)
    assert store.get_bytes("images/ef.png") == b"replaced"

    store.delete(["images/ab/cd.png", "images/ef.png", "images/never-existed.png"])
    assert [o.key for o in store.list("images/")] == []
    with pytest.raises(StorageError, match=r"no object at images/ef\.png"):
        store.get_bytes("images/ef.png")
    assert store.uri("metadata/x.parquet").endswith("/metadata/x.parquet")


def test_delete_many_at_once(store: ObjectStore) -> None:
    """A ledger prune deletes hundreds of keys in one call (locally, from several threads),
    some of them already gone; a key outside the root is refused."""
    keys = [f"ledger/b/{i:06d}-x/a.{e}-intent.json" for i in range(60) for e in range(3)]
    for key in keys[::2]:
        store.put_bytes(key, b"{}")
    store.put_bytes("ledger/b/kept.json", b"{}")
    store.delete(keys)
    assert [o.key for o in store.list("ledger/")] == ["ledger/b/kept.json"]
    if isinstance(store, LocalStore):
        with pytest.raises(StorageError, match="escapes the storage root"):
            store.delete([*keys, "../outside.json"])


def test_create_only_never_overwrites(store: ObjectStore) -> None:
    store.put_bytes("images/a.png", b"first", create_only=True)
    store.put_bytes("images/a.png", b"first", create_only=True)  # a retry: success
    with pytest.raises(ObjectExists):
        store.put_bytes("images/a.png", b"other", create_only=True)
    assert store.get_bytes("images/a.png") == b"first"


def test_keys_cannot_escape_the_root(store: ObjectStore) -> None:
    with pytest.raises(StorageError, match="escapes"):
        store.put_bytes("../outside.png", b"x")


# -- S3 specifics ---------------------------------------------------------------------------


def test_s3_client_config_and_uri(s3_store: S3Store, s3_settings: Settings) -> None:
    config = s3_store.client.meta.config
    assert config.s3 == {"addressing_style": "path"}
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert s3_store.root == s3_settings.storage
    assert s3_store.uri("images/a.png") == f"{s3_settings.storage}/images/a.png"
    assert s3_settings.aws_secret_access_key not in repr(s3_store)


def test_image_objects_carry_headers_metadata_and_checksum(s3_store: S3Store) -> None:
    image = PNG + os.urandom(5000)
    metadata = {"record-id": "r-1", "seed": "42", "model": "V_3", "batch": "b1"}
    s3_store.put_bytes(
        "images/r-1.png",
        image,
        content_type="image/png",
        cache_control=IMMUTABLE,
        metadata=metadata,
        create_only=True,
    )
    head = s3_store.client.head_object(
        Bucket=s3_store.bucket, Key="prefix/images/r-1.png", ChecksumMode="ENABLED"
    )
    assert head["ContentType"] == "image/png"
    assert head["CacheControl"] == IMMUTABLE
    assert head["Metadata"] == metadata
    assert head["ChecksumSHA256"] == sha256_b64(image)  # stored, as sent and verified


def test_server_rejects_a_wrong_checksum(s3_store: S3Store) -> None:
    """The integrity guarantee rests on the server checking the header: prove it does,
    also for the store's SHA-256-checksummed requests, which skip SigV4's payload hash."""
    client, bucket = s3_store.client, s3_store.bucket
    payload_hashes: list[str] = []

    def before_send(request: Any, **_: Any) -> None:
        payload_hashes.append(request.headers["X-Amz-Content-SHA256"])

    client.meta.events.register("before-send.s3.PutObject", before_send)
    s3_store.put_bytes("good.png", b"data")
    assert payload_hashes == [b"UNSIGNED-PAYLOAD"]
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    for name, header in [("ChecksumSHA256", sha256_b64(b"other")), ("ContentMD5", wrong_md5)]:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            client.put_object(Bucket=bucket, Key="prefix/bad.png", Body=b"data", **{name: header})
        assert caught.value.response["Error"]["Code"] == "BadDigest"
    assert s3_store.head("bad.png") is None


def test_create_only_uses_if_none_match(s3_store: S3Store) -> None:
    statuses = record_calls(s3_store, "PutObject")
    s3_store.put_bytes("images/a.png", b"same", create_only=True)
    s3_store.put_bytes("images/a.png", b"same", create_only=True)
    with pytest.raises(ObjectExists, match="different bytes"):
        s3_store.put_bytes("images/a.png", b"different", create_only=True)
    assert statuses == [200, 412, 412]  # the server refused both overwrites itself


def test_create_only_head_then_put_fallback(s3_store: S3Store) -> None:
    """For servers that ignore If-None-Match (detected by preflight)."""
    s3_store.conditional_writes = False
    statuses = record_calls(s3_store, "PutObject")
    s3_store.put_bytes("images/b.png", b"same", create_only=True)
    s3_store.put_bytes("images/b.png", b"same", create_only=True)
    with pytest.raises(ObjectExists):
        s3_store.put_bytes("images/b.png", b"different", create_only=True)
    assert statuses == [200]
    assert s3_store.get_bytes("images/b.png") == b"same"


def test_multipart_upload_round_trip(s3_store: S3Store) -> None:
    big = os.urandom(20 * 1024 * 1024)
    s3_store.put_bytes("images/big.png", big, content_type="image/png", create_only=True)
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="prefix/images/big.png")
    assert head["ETag"].endswith('-3"')  # three 8 MiB parts
    assert head["ContentType"] == "image/png"
    assert s3_store.get_bytes("images/big.png") == big
    s3_store.put_bytes("images/big.png", big, create_only=True)  # compared: a retry
    with pytest.raises(ObjectExists):
        s3_store.put_bytes("images/big.png", big[:-1] + b"!", create_only=True)


def test_multipart_create_only_loses_a_race_cleanly(
    s3_store: S3Store, s3_server: SeaweedServer
) -> None:
    """Another writer creates the key while our parts upload: If-None-Match on
    CompleteMultipartUpload refuses ours, and our parts are aborted, not left billed."""
    rival = s3_server.client()

    def rival_writes_first(**_: Any) -> None:
        rival.put_object(Bucket=s3_store.bucket, Key="prefix/images/race.png", Body=b"rival")

    s3_store.client.meta.events.register(
        "before-call.s3.CompleteMultipartUpload", rival_writes_first
    )
    statuses = record_calls(s3_store, "CompleteMultipartUpload")
    with pytest.raises(ObjectExists):
        s3_store.put_bytes("images/race.png", os.urandom(9 * 1024 * 1024), create_only=True)
    assert statuses == [412]
    assert s3_store.get_bytes("images/race.png") == b"rival"
    uploads = s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket)
    assert uploads.get("Uploads", []) == []


def test_server_side_encryption_passthrough(s3_store: S3Store) -> None:
    s3_store.sse = "AES256"
    s3_store.put_bytes("images/enc.png", b"secret pixels")
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key="prefix/images/enc.png")
    assert head["ServerSideEncryption"] == "AES256"
    assert s3_store.get_bytes("images/enc.png") == b"secret pixels"


@pytest.mark.slow
def test_delete_batches_of_1000(s3_store: S3Store) -> None:
    keys = [f"images/{i:05d}.png" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3_store.put_bytes(k, b"x"), keys))
    assert len(list(s3_store.list("images/"))) == 1100  # paginated: 1,000 per page
    statuses = record_calls(s3_store, "DeleteObjects")
    s3_store.delete(keys)
    assert statuses == [200, 200]
    assert list(s3_store.list("images/")) == []


# -- preflight ------------------------------------------------------------------------------


def test_preflight_passes_and_cleans_up(s3_store: S3Store) -> None:
    s3_store.preflight()
    assert s3_store.conditional_writes is True  # SeaweedFS honours If-None-Match
    assert list(s3_store.list(".preflight/")) == []


def _settings(server: SeaweedServer, storage: str, **overrides: str) -> Settings:
    return load_settings({**server.env(), "IDEOGRAM_STORAGE": storage, **overrides})


def test_preflight_wrong_credentials(s3_server: SeaweedServer, s3_settings: Settings) -> None:
    wrong = "not-the-secret-" + "x" * 20
    settings = _settings(s3_server, s3_settings.storage, AWS_SECRET_ACCESS_KEY=wrong)
    with pytest.raises(StoragePreflightError, match="AWS credentials were rejected") as caught:
        open_store(settings).preflight()
    assert wrong not in str(caught.value)
    assert s3_server.secret_key not in str(caught.value)


def test_preflight_missing_bucket(s3_server: SeaweedServer) -> None:
    settings = _settings(s3_server, "s3://no-such-bucket-here/prefix")
    with pytest.raises(StoragePreflightError, match="bucket no-such-bucket-here does not exist"):
        open_store(settings).preflight()


def test_preflight_no_write_permission(s3_server: SeaweedServer, s3_settings: Settings) -> None:
    env = {**s3_server.env(read_only=True), "IDEOGRAM_STORAGE": s3_settings.storage}
    with pytest.raises(StoragePreflightError, match=r"access denied: cannot write .*PutObject"):
        open_store(load_settings(env)).preflight()


def test_preflight_unreachable_endpoint_fails_fast(s3_server: SeaweedServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = _settings(s3_server, "s3://bucket/prefix", AWS_ENDPOINT_URL=closed)
    started = time.monotonic()
    with pytest.raises(StoragePreflightError, match=f"cannot reach S3 endpoint URL: {closed}"):
        open_store(settings).preflight()
    assert time.monotonic() - started < 5


# -- DuckDB and pyarrow over S3 -------------------------------------------------------------

PARTITIONS = {
    ("2026-11-01", "a"): ["id-1", "id-2"],
    ("2026-11-02", "a"): ["id-3"],
    ("2026-11-02", "b"): ["id-4", "id-5", "id-6"],
}


def parquet_bytes(ids: list[str]) -> bytes:
    table = pa.table({"id": ids, "seed": list(range(len(ids))), "status": ["stored"] * len(ids)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@pytest.fixture
def dataset(s3_store: S3Store) -> Iterator[str]:
    """A small Hive-partitioned metadata dataset on S3; yields its s3:// glob."""
    for (date, batch), ids in PARTITIONS.items():
        key = f"metadata/generations/date={date}/batch={batch}/{ids[0]}.parquet"
        s3_store.put_bytes(key, parquet_bytes(ids))
    yield s3_store.uri("metadata/generations") + "/**/*.parquet"


def test_duckdb_reads_hive_parquet_over_s3_with_pruning(
    s3_store: S3Store, s3_settings: Settings, dataset: str
) -> None:
    con = duckdb.connect()
    configure_duckdb_s3(con, s3_settings)
    source = f"read_parquet('{dataset}', hive_partitioning=true)"
    rows = con.execute(
        f"SELECT CAST(date AS VARCHAR), batch, count(*) FROM {source} GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows == [("2026-11-01", "a", 2), ("2026-11-02", "a", 1), ("2026-11-02", "b", 3)]

    # A corrupt file in another partition: any query that opens it fails, so a filtered
    # query that succeeds proves the partition was pruned by its path alone.
    s3_store.put_bytes("metadata/generations/date=2026-11-03/batch=a/bad.parquet", b"not parquet")
    with pytest.raises(duckdb.Error):
        con.execute(f"SELECT count(*) FROM {source}").fetchall()
    ids = con.execute(f"SELECT id FROM {source} WHERE date = '2026-11-01' ORDER BY id").fetchall()
    assert ids == [("id-1",), ("id-2",)]
    plan = con.execute(
        f"EXPLAIN ANALYZE SELECT count(*) FROM {source} WHERE date = '2026-11-02'"
    ).fetchall()
    assert "Scanning Files: 2/4" in plan[0][1]  # the profiler agrees: 2 of 4 files opened


def test_pyarrow_dataset_reads_the_same_layout(
    s3_store: S3Store, s3_settings: Settings, dataset: str
) -> None:
    endpoint = urllib.parse.urlsplit(s3_settings.aws_endpoint_url or "")
    fs = pyarrow.fs.S3FileSystem(
        access_key=s3_settings.aws_access_key_id,
        secret_key=s3_settings.aws_secret_access_key,
        region=s3_settings.aws_region,
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme,
    )
    base = f"{s3_store.bucket}/{s3_store.prefix}/metadata/generations"
    table = ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive").to_table()
    columns = [table[name].to_pylist() for name in ("date", "batch", "id")]
    got = sorted((str(d), b, i) for d, b, i in zip(*columns, strict=True))
    assert got == sorted((d, b, i) for (d, b), ids in PARTITIONS.items() for i in ids)


def test_duckdb_init_sql_hides_secrets_and_works(s3_settings: Settings, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from ideogram_pipeline.history.schema import GenerationRecord
    from ideogram_pipeline.history.tables import HistoryTables

    now = datetime.now(UTC)
    HistoryTables(s3_settings).write(
        "a",
        [
            GenerationRecord(
                id=f"id-{n}",
                batch="a",
                row=n,
                image_index=0,
                status="stored",
                created_at=now,
                date=now.date(),
                attempt_id="a1",
            )
            for n in range(1, 7)
        ],
    )
    hidden = duckdb_init_sql(s3_settings, with_credentials=False)
    assert s3_settings.aws_secret_access_key not in hidden
    assert s3_settings.aws_access_key_id not in hidden
    assert "'<AWS_SECRET_ACCESS_KEY>'" in hidden and "URL_STYLE 'path'" in hidden
    shown = duckdb_init_sql(s3_settings, with_credentials=True)
    assert s3_settings.aws_secret_access_key in shown

    def fresh() -> duckdb.DuckDBPyConnection:
        # A user's client with the extensions installed the offline way (the wheels' files).
        con = duckdb.connect(config={"extension_directory": str(tmp_path / "extensions")})
        for name in ("httpfs", "delta"):
            con.execute(f"INSTALL '{extension_path(name)}'")
        return con

    con = fresh()
    con.execute(shown)
    assert con.execute("SELECT count(*) FROM generations").fetchone() == (6,)
    with pytest.raises(duckdb.Error):  # placeholders are not credentials
        fresh().execute(hidden).execute("SELECT count(*) FROM generations").fetchall()

"""Least privilege on S3: the documented IAM policies, SSE pass-through, presigned sharing.

Real components: a SeaweedFS server of its own, started with two extra identities derived
from ``deploy/iam/generation.json`` and ``deploy/iam/retention.json`` (SeaweedFS expresses
Allow as per-prefix ``Read``/``Write``/``List`` actions; the policies' Deny statements become a
bucket policy naming each identity). A batch then runs with the generation credentials,
which can write images and metadata but cannot delete them; the retention credentials can.
The simulator stands in for Ideogram.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import load_batch
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.sharing import ShareError, share_image
from ideogram_pipeline.runs.runner import execute_batch
from ideogram_pipeline.settings import SettingsError, load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.storage import StorageError, open_store
from tests.support.seaweed import SeaweedServer, running_seaweedfs

IAM = Path(__file__).resolve().parents[1] / "deploy" / "iam"
BUCKET, PREFIX = "least-privilege", "root"
ROLES = {
    "generation": ("AKGENERATION0001", "gen-secret-Zq81"),
    "retention": ("AKRETENTION0001", "ret-secret-Lp27"),
}


def _listify(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


def seaweed_translation(policy: dict[str, Any], principal: str) -> tuple[list[str], list[dict]]:
    """SeaweedFS identity actions and bucket-policy statements equivalent to ``policy``.

    SeaweedFS has no separate delete permission: ``Write`` covers PUT and DELETE, so a
    policy's explicit Deny of ``s3:DeleteObject`` becomes a bucket-policy Deny for this
    identity, which SeaweedFS evaluates after the identity's actions.
    """
    actions: set[str] = set()
    denies: list[dict] = []
    for statement in policy["Statement"]:
        verbs = set(_listify(statement["Action"]))
        resources = [
            r.replace("BUCKET", BUCKET).replace("PREFIX", PREFIX)
            for r in _listify(statement["Resource"])
        ]
        if statement["Effect"] == "Deny":
            s3_verbs = sorted(v for v in verbs if v in ("s3:DeleteObject", "s3:PutObject"))
            if s3_verbs:
                arn = f"arn:aws:iam::000000000000:user/{principal}"
                denies.append(
                    {
                        "Effect": "Deny",
                        "Principal": {"AWS": [arn]},
                        "Action": s3_verbs,
                        "Resource": resources,
                    }
                )
            continue
        for resource in resources:
            path = resource.removeprefix("arn:aws:s3:::")
            if "/" not in path:
                if "s3:ListBucket" in verbs:
                    actions.add(f"List:{path}")
                continue
            if "s3:GetObject" in verbs:
                actions.add(f"Read:{path}")
            if verbs & {"s3:PutObject", "s3:DeleteObject"}:
                actions.add(f"Write:{path}")
    return sorted(actions), denies


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    identities, denies = [], []
    for role, (key, secret) in ROLES.items():
        policy = json.loads((IAM / f"{role}.json").read_text())
        actions, role_denies = seaweed_translation(policy, role)
        identities.append(
            {
                "name": role,
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": actions,
            }
        )
        denies += role_denies
    with running_seaweedfs(tmp_path_factory.mktemp("iam"), extra_identities=identities) as s:
        s.create_bucket(BUCKET)
        s.client().put_bucket_policy(
            Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": denies})
        )
        yield s


def _env(server: SeaweedServer, role: str, **extra: str) -> dict[str, str]:
    key, secret = ROLES[role]
    return {
        **server.env(),
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "IDEOGRAM_STORAGE": f"s3://{BUCKET}/{PREFIX}",
        **extra,
    }


def test_the_policies_say_what_the_readme_says() -> None:
    generation = json.loads((IAM / "generation.json").read_text())
    allowed = {
        (verb, resource)
        for st in generation["Statement"]
        if st["Effect"] == "Allow"
        for verb in _listify(st["Action"])
        for resource in _listify(st["Resource"])
    }
    assert ("s3:PutObject", "arn:aws:s3:::BUCKET/PREFIX/images/*") in allowed
    assert ("s3:GetObject", "arn:aws:s3:::BUCKET/PREFIX/history/*") in allowed
    assert not [r for verb, r in allowed if verb == "s3:DeleteObject" and "/images/" in r]
    retention = json.loads((IAM / "retention.json").read_text())
    assert any(
        "s3:DeleteObject" in _listify(st["Action"]) and st["Effect"] == "Allow"
        for st in retention["Statement"]
    )


@pytest.mark.slow
def test_generation_cannot_delete_and_retention_can(
    server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        api = {"IDEOGRAM_API_KEY": sim.api_key, "IDEOGRAM_BASE_URL": sim.base_url}
        generation = load_settings(_env(server, "generation", IDEOGRAM_S3_SSE="AES256", **api))
        csv = tmp_path / "least.csv"
        csv.write_text("prompt\nA red kite over a dune\nA blue kite at dusk\n", encoding="utf-8")
        summary = execute_batch(load_batch(csv), generation)  # preflight, ledger, images, tables
    assert summary.stored == 2, summary

    con = history.connect(generation)
    try:
        keys = [k for (k,) in con.execute("SELECT image_key FROM generations").fetchall()]
    finally:
        con.close()
    admin = server.client()
    commits = [i.key for i in open_store(generation).list("history/") if "/_delta_log/" in i.key]
    data = [i.key for i in open_store(generation).list("history/") if i.key.endswith(".parquet")]
    for key in [*keys, commits[0], data[0]]:
        head = admin.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")
        assert head["ServerSideEncryption"] == "AES256"  # SSE passed through on every upload

    as_generator = open_store(generation)
    with pytest.raises(StorageError, match="AccessDenied"):
        as_generator.delete([keys[0]])
    with pytest.raises(StorageError, match=r"AccessDenied|access denied"):
        as_generator.put_bytes("elsewhere/x.txt", b"not my prefix")
    assert as_generator.head(keys[0]) is not None

    as_retention = open_store(load_settings(_env(server, "retention")))
    as_retention.delete([keys[0]])
    assert as_retention.head(keys[0]) is None

    # The retention job itself runs on retention.json alone: everything older than tomorrow.
    for name, value in _env(server, "retention").items():
        monkeypatch.setenv(name, value)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    result = CliRunner().invoke(main, ["cleanup", "--older-than", "0", "--as-of", tomorrow])
    assert result.exit_code == 0, result.output
    assert as_retention.head(keys[1]) is None


@pytest.mark.slow
def test_sharing_is_a_presigned_url_never_a_public_object(
    server: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        env = _env(
            server, "generation", IDEOGRAM_API_KEY=sim.api_key, IDEOGRAM_BASE_URL=sim.base_url
        )
        settings = load_settings(env)
        csv = tmp_path / "share.csv"
        csv.write_text("prompt\nA green kite in rain\n", encoding="utf-8")
        execute_batch(load_batch(csv, key="share-me"), settings)
    con = history.connect(settings)
    try:
        record_id, key, digest = con.execute(
            "SELECT id, image_key, sha256 FROM generations WHERE batch = 'share-me'"
        ).fetchone()
    finally:
        con.close()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["share", record_id[:10], "--expires", "120"])
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    assert "X-Amz-Expires=120" in url and "X-Amz-Signature=" in url
    assert ROLES["generation"][1] not in result.output  # the secret is never in the link

    fetched = httpx.get(url)
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == digest
    assert httpx.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status_code == 403
    assert httpx.get(url.split("?", 1)[0]).status_code == 403  # the object itself is not public

    with pytest.raises(ShareError, match="between 1 and 604800"):
        share_image(settings, record_id, 8 * 24 * 3600)
    local = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "local")})
    with pytest.raises(ShareError, match="needs an S3 storage root"):
        share_image(local, record_id)
    assert key.startswith("images/")


def test_sse_settings_reach_the_store() -> None:
    kms = load_settings({"IDEOGRAM_STORAGE": "s3://b/p", "IDEOGRAM_S3_SSE_KMS_KEY_ID": "alias/img"})
    assert (kms.s3_sse, kms.s3_sse_spec) == ("aws:kms", "alias/img")
    assert open_store(kms).sse == "alias/img"  # type: ignore[attr-defined]
    assert load_settings({"IDEOGRAM_S3_SSE": "aws:kms"}).s3_sse_spec == "aws:kms"
    assert load_settings({}).s3_sse_spec is None
    with pytest.raises(SettingsError, match="IDEOGRAM_S3_SSE"):
        load_settings({"IDEOGRAM_S3_SSE": "rot13"})
    with pytest.raises(SettingsError, match="needs IDEOGRAM_S3_SSE=aws:kms"):
        load_settings({"IDEOGRAM_S3_SSE": "AES256", "IDEOGRAM_S3_SSE_KMS_KEY_ID": "k"})

"""Shared fixtures. Nothing here is faked: S3 is a real SeaweedFS server on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping

import pytest

from ideogram_pipeline.settings import Settings, load_settings
from tests.support.seaweed import SeaweedServer, running_seaweedfs

#: Variables a developer's shell may set that would leak into subprocesses under test.
_PROJECT_PREFIXES = ("IDEOGRAM_", "AWS_", "DAGSTER_")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS ``weed mini`` for the whole session (about a second to start)."""
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


def new_bucket(server: SeaweedServer) -> str:
    """Create a bucket with a unique name, so tests never see each other's objects."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    server.create_bucket(name)
    return name


@pytest.fixture
def s3_settings(s3_server: SeaweedServer) -> Settings:
    """Settings for storage ``s3://<fresh bucket>/prefix`` on the session's server."""
    bucket = new_bucket(s3_server)
    return load_settings({"IDEOGRAM_STORAGE": f"s3://{bucket}/prefix", **s3_server.env()})


def make_env(
    *, server: SeaweedServer | None = None, storage: str | None = None, **extra: str
) -> dict[str, str]:
    """An environment for a subprocess: the current one minus project variables, plus
    the server's AWS variables, ``IDEOGRAM_STORAGE`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROJECT_PREFIXES)}
    if server is not None:
        env.update(server.env())
    if storage is not None:
        env["IDEOGRAM_STORAGE"] = storage
    env.update(extra)
    return env


@pytest.fixture
def subprocess_env() -> Callable[..., Mapping[str, str]]:
    """:func:`make_env` as a fixture, for tests that would rather not import conftest."""
    return make_env

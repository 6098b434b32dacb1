"""Shared fixtures. Nothing here is faked: S3 is a real SeaweedFS server on loopback."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator, Mapping

import pytest

from ideogram_pipeline.settings import Settings, load_settings
from tests.support.seaweed import SeaweedServer, running_seaweedfs

#: Variables a developer's shell may set that would leak into subprocesses under test.
_PROJECT_PREFIXES = ("IDEOGRAM_", "AWS_", "DAGSTER_")


def pytest_configure(config: pytest.Config) -> None:
    """Give the session the default Ctrl-C and SIGTERM, whoever started it.

    A shell without job control starts background commands with SIGINT ignored. Dagster's
    in-process runs in this process's main thread then copy SIGINT's handler to SIGTERM
    (``dagster._utils.interrupts``), so SIGTERM is ignored too, and every CLI run started
    afterwards inherits that: Dagster's compute-log ``tail`` processes in it no longer die
    when terminated, outlive the run and hold its output pipes open, and the test reading
    them waits for ever (a suite started with ``bash .ci/run &`` hung on its first failed
    CLI run).
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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

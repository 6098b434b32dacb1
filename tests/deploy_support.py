"""Helpers for the deployment tests: a throwaway PostgreSQL database, a RabbitMQ vhost, and
long-running processes (Dagster webserver, daemon, Celery workers) that are always stopped.

Nothing is faked: the database and the broker are the servers running on this machine
(127.0.0.1:5432 with trust auth, 127.0.0.1:5672 guest/guest); each test gets a database and
a vhost of its own and drops them afterwards.

A missing service skips the test on a developer's machine, but fails it when ``CI`` is set
(:func:`service_missing`): CI must never go green by not running the deployment tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_HOST = "127.0.0.1"
PG_PORT = 5432
#: Both roles exist on these machines with trust auth; ``postgres`` may create databases.
PG_USERS = ("postgres", "root")
PG_ADMIN_DB = "test"

T = TypeVar("T")


def in_ci() -> bool:
    """Whether this is a CI run: ``CI`` set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def service_missing(reason: str) -> NoReturn:
    """Skip the test because a service it needs is missing; fail it instead in CI.

    Locally a missing PostgreSQL, RabbitMQ or Chromium is a machine without that service:
    the rest of the suite still says something. In CI it means the deployment tests did not
    run, which must not pass unnoticed.
    """
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing service fails the run)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float = 120,
    every: float = 0.5,
    watch: Sequence[Service] = (),
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise, or
    as soon as one of the ``watch``ed services has exited.

    A deadline, not a timing assertion: it only bounds how long a broken setup hangs.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        for service in watch:
            if service.process.poll() is not None:
                raise AssertionError(
                    f"{service.name} exited ({service.process.returncode}) while waiting for "
                    f"{what}:\n{service.tail()}"
                )
        try:
            value = probe()
        except Exception as exc:  # the service is not up yet: keep polling
            last_error = exc
        else:
            if value:
                return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s (last: {last_error!r})")


# -- PostgreSQL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresDatabase:
    host: str
    port: int
    user: str
    name: str

    def env(self) -> dict[str, str]:
        """What deploy/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": self.name,
        }

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        import psycopg2

        con = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=self.name)
        try:
            with con.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            con.close()


def _admin_connection() -> Any:
    import psycopg2

    errors = []
    for user in PG_USERS:
        try:
            con = psycopg2.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname=PG_ADMIN_DB, connect_timeout=5
            )
        except psycopg2.Error as exc:
            errors.append(f"{user}: {str(exc).strip()}")
            continue
        con.autocommit = True
        return con
    service_missing(f"no PostgreSQL server usable at {PG_HOST}:{PG_PORT}: {'; '.join(errors)}")


@contextlib.contextmanager
def temporary_database() -> Iterator[PostgresDatabase]:
    """A fresh database ``dagster_test_<random>`` that is dropped afterwards, whatever happens."""
    admin = _admin_connection()
    name = f"dagster_test_{uuid.uuid4().hex[:12]}"
    user = admin.info.user
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PostgresDatabase(PG_HOST, PG_PORT, user, name)
    finally:
        with admin.cursor() as cur:
            # FORCE ends connections a killed process may have left behind (PostgreSQL 13+).
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def database_exists(name: str) -> bool:
    admin = _admin_connection()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        admin.close()


# -- RabbitMQ -----------------------------------------------------------------------------------


@contextlib.contextmanager
def temporary_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of our own (``rabbitmqctl``), deleted afterwards, so queues left by
    a crashed test never reach another one. Yields the vhost name."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        service_missing("rabbitmqctl not found: cannot create a RabbitMQ vhost for the test")
    name = f"dagster-test-{uuid.uuid4().hex[:12]}"
    try:
        subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True, timeout=60)
        subprocess.run(
            [ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        service_missing(f"RabbitMQ at 127.0.0.1:5672 unusable (rabbitmqctl add_vhost: {exc})")
    try:
        yield name
    finally:
        subprocess.run([ctl, "delete_vhost", name], capture_output=True, timeout=60)


def vhost_exists(name: str) -> bool:
    ctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
    listed = subprocess.run(
        [ctl, "-q", "list_vhosts", "name"], capture_output=True, text=True, timeout=60
    )
    return name in listed.stdout.split()


# -- processes ----------------------------------------------------------------------------------


def service_env(**extra: str) -> dict[str, str]:
    """The current environment minus project variables (a developer's shell must not leak
    into the services under test), plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("IDEOGRAM_", "AWS_", "DAGSTER_"))
    }
    # dagster-celery starts `celery` by name: this venv's scripts come first on PATH.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Service:
    """A process started in its own session, so stopping it stops its children too."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Ctrl-C (SIGINT to the whole group, as a terminal sends it), then SIGKILL."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        # Children that outlived their parent (a run worker) still belong to the session.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def services() -> Iterator[Callable[..., Service]]:
    """Yields ``start(name, argv, env=..., cwd=...)``; every started process is stopped on
    exit, last started first. On failure the logs' tails are printed (pytest shows them)."""
    started: list[Service] = []

    def start(
        name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_dir: Path
    ) -> Service:
        log = log_dir / f"{name}.log"
        handle = log.open("wb")
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        handle.close()
        service = Service(name, process, log)
        started.append(service)
        return service

    try:
        yield start
    except BaseException:
        for service in started:
            print(f"---- {service.name} (exit {service.process.poll()}) ----\n{service.tail()}")
        raise
    finally:
        for service in reversed(started):
            service.stop()


def dagster_bin(name: str) -> str:
    """A console script of this venv (``dagster-webserver``, ``dagster-daemon``, ``celery``)."""
    path = BIN / name
    return str(path) if path.exists() else name


def graphql(port: int, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    import httpx

    response = httpx.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": query, "variables": dict(variables or {})},
        timeout=30,
    )
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return dict(body["data"])

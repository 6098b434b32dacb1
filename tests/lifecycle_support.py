"""Helpers for the lifecycle tests: real batches into a real root, and what the root holds.

History is made by running real batches against the bundled simulator
(``pipeline.execute_batch``, which writes the Delta tables), never by writing Parquet by
hand; age comes from ``--as-of``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import load_batch
from ideogram_pipeline.runs.runner import execute_batch
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import ObjectStore, open_store
from tests.support.seaweed import SeaweedServer

__all__ = [
    "Root",
    "cleanup_killed_at",
    "make_root",
    "run_cli",
    "simulator_running",
]

# A real cleanup in a child process that SIGKILLs itself when ``run_cleanup`` reports the
# phase named by argv[1]: as abrupt as a killed worker, at an exact step.
_KILLED_CLEANUP = """
import os, signal, sys
from ideogram_pipeline.lifecycle.policy import load_lifecycle_config, parse_as_of
from ideogram_pipeline.lifecycle.retention import run_cleanup
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store

def die_at(phase):
    if phase == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)

settings = load_settings(os.environ)
policy = load_lifecycle_config(os.environ).retention
run_cleanup(settings, open_store(settings), policy, parse_as_of(sys.argv[2]), on_phase=die_at)
"""


@contextmanager
def simulator_running() -> Iterator[Simulator]:
    with running_simulator(SimulatorConfig(latency_s=0.0, image_scale=0.25, url_ttl_s=60)) as sim:
        yield sim


class Root:
    """A storage root (local or S3) with the environment a CLI run would have."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.settings: Settings = load_settings(env)
        self.store: ObjectStore = open_store(self.settings)
        self._csvs = 0

    def batch(self, key: str, rows: list[tuple[str, str]], header: str = "prompt,tags") -> Any:
        """Run one CSV batch (rows of CSV cells) for real; returns its summary."""
        self._csvs += 1
        csv = self.tmp / f"batch-{self._csvs}.csv"
        lines = [header] + [",".join(f'"{cell}"' for cell in row) for row in rows]
        csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return execute_batch(load_batch(csv, key=key), self.settings, store=self.store)

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.queries([sql], params)[0]

    def queries(
        self, sqls: list[str], params: list[Any] | None = None
    ) -> list[list[tuple[Any, ...]]]:
        """Each query's rows, all on one fresh connection (views as a new reader sees them)."""
        con = history.connect(self.settings, self.store)
        try:
            return [con.execute(sql, params or []).fetchall() for sql in sqls]
        finally:
            con.close()

    def objects(self, prefix: str = "") -> dict[str, int]:
        return {info.key: info.size for info in self.store.list(prefix)}

    def image_keys(self) -> set[str]:
        return {key for key in self.objects("images/") if key.endswith(".png")}

    def stored_keys(self) -> set[str]:
        return {
            k
            for (k,) in self.query(
                "SELECT image_key FROM generation_records WHERE status = 'stored'"
            )
        }

    def ids(self, where: str = "true") -> set[str]:
        return {i for (i,) in self.query(f"SELECT id FROM generation_records WHERE {where}")}

    def current_ids(self, where: str = "true") -> set[str]:
        return {i for (i,) in self.query(f"SELECT id FROM generations WHERE {where}")}

    def rollup(self) -> list[tuple[Any, ...]]:
        """The ``usage_rollup`` table's (id, cleanup_id) rows, by id."""
        con = history.connect(self.settings, self.store, views=("usage_rollup",))
        try:
            return con.execute("SELECT id, cleanup_id FROM usage_rollup ORDER BY id").fetchall()
        finally:
            con.close()

    def data_files(self, name: str) -> tuple[set[str], set[str]]:
        """Table ``name``'s Parquet files: those its current version reads, and those in
        storage (vacuum makes the two equal)."""
        from ideogram_pipeline.history.tables import HistoryTables

        table = HistoryTables(self.settings).table(name)
        referenced = set(table.get_add_actions(flatten=True).column("path").to_pylist())
        prefix = f"history/{name}/"
        stored = {
            key[len(prefix) :]
            for key in self.objects(prefix)
            if key.endswith(".parquet") and "/_delta_log/" not in key
        }
        return referenced, stored


def make_root(
    kind: str,
    tmp_path: Path,
    simulator: Simulator,
    request: pytest.FixtureRequest,
    retention: str = "[retention]\ndefault_days = 30\n",
) -> Root:
    """A fresh root: ``local`` (a tmp folder) or ``s3`` (a fresh bucket on SeaweedFS)."""
    config = tmp_path / "retention.toml"
    config.write_text(retention, encoding="utf-8")
    env = {
        "IDEOGRAM_API_KEY": simulator.api_key,
        "IDEOGRAM_BASE_URL": simulator.base_url,
        "IDEOGRAM_RETENTION": str(config),
        "IDEOGRAM_MAX_INFLIGHT": "10",
    }
    if kind == "s3":
        server: SeaweedServer = request.getfixturevalue("s3_server")
        from tests.conftest import new_bucket

        env.update(server.env())
        env["IDEOGRAM_STORAGE"] = f"s3://{new_bucket(server)}/lc"
    else:
        env["IDEOGRAM_STORAGE"] = str(tmp_path / "root")
    return Root(env, tmp_path)


def cleanup_killed_at(root: Root, phase: str, as_of: str) -> int:
    """Run a real cleanup in a child process that is killed right after ``phase``; returns
    its exit code (-9 when the kill happened)."""
    from tests.conftest import make_env

    done = subprocess.run(
        [sys.executable, "-c", _KILLED_CLEANUP, phase, as_of],
        env=make_env(**root.env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root.tmp,
    )
    assert done.returncode == -9, (done.stdout, done.stderr)
    return done.returncode


class CliResult:
    """What a command printed and how it ended, in process or in a child."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __repr__(self) -> str:
        return f"CliResult({self.returncode}, {self.stdout!r}, {self.stderr!r})"


def run_cli(
    root: Root,
    args: list[str],
    extra_env: Mapping[str, str] | None = None,
    *,
    child: bool = False,
) -> CliResult:
    """The real command with ``root``'s environment: in process (fast) or, with ``child``,
    in a child process that a test can have killed."""
    env = {**root.env, **(extra_env or {})}
    if child:
        from tests.conftest import make_env

        done = subprocess.run(
            [sys.executable, "-c", "from ideogram_pipeline.cli import main; main()", *args],
            env=make_env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root.tmp,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)
    from click.testing import CliRunner

    from ideogram_pipeline.cli import main

    # Unset every project variable the test's own environment has, then set root's.
    cleared: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("IDEOGRAM_", "AWS_", "DAGSTER_"))
    }
    result = CliRunner().invoke(main, args, env={**cleared, **env}, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)

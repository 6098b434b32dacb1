"""Running the real CLI in child processes against an in-process simulator, and killing it.

Shared by the crash, stop, lease, disk-full and estimate tests: one way to write a batch
file, one environment for the child (simulator, storage root, Dagster home) and one
kill-when-ready loop, so a change to how the CLI is started is made once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ideogram_pipeline.simulator.server import Simulator
from tests.conftest import make_env

__all__ = ["RUN", "run_and_kill", "simulator_env", "write_batch"]

#: ``ideogram-pipeline run`` in a child process (the console script may not be on PATH).
RUN = [sys.executable, "-c", "from ideogram_pipeline.cli import main; main()", "run"]


def write_batch(path: Path, prompt: str, rows: int) -> Path:
    """A ``prompt,seed`` CSV of ``rows`` rows; ``prompt`` is formatted with the row's number."""
    lines = ["prompt,seed"] + [f'"{prompt.format(n)}",{n}' for n in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def simulator_env(
    sim: Simulator, tmp_path: Path, *, home: str = "home", **extra: str
) -> dict[str, str]:
    """The child's environment: the simulator's key and URL, ``tmp_path/storage`` as the
    root and ``tmp_path/home`` (created) as the Dagster instance, plus ``extra``."""
    (tmp_path / home).mkdir(exist_ok=True)
    env = make_env(
        storage=str(tmp_path / "storage"),
        IDEOGRAM_API_KEY=sim.api_key,
        IDEOGRAM_BASE_URL=sim.base_url,
        DAGSTER_HOME=str(tmp_path / home),
    )
    env.update(extra)
    return env


def run_and_kill(
    cmd: list[str], env: dict[str, str], when: Callable[[], bool], timeout: float = 60
) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``when()`` holds. False if it finished first."""
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if when():
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return True
            time.sleep(0.002)
        raise AssertionError("the batch neither finished nor reached the kill point")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

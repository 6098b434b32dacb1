"""Helpers shared by the scale benchmarks (``engine_scale``, ``history_*``, ``cli_scale``).

- the bundled simulator in a process of its own, so the API's CPU (rendering and serving
  1-2 MB PNGs) is not charged to the pipeline and does not share its GIL, as with the real
  API on another machine;
- peak-RSS sampling and CPU time of another process (and its children) with psutil;
- realistic prompts (``tests/data/krea-prompts-sample.csv``) and the load average, which
  every figure is reported with because other work shares this 2-core machine.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
PROMPTS_CSV = REPO / "tests" / "data" / "krea-prompts-sample.csv"


def load_average() -> str:
    """``1-min/5-min/15-min`` load average, e.g. ``1.52/1.80/2.01``."""
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


@cache
def sample_prompts() -> tuple[str, ...]:
    """Real prompts from public Stable Diffusion use (the project's test sample)."""
    with PROMPTS_CSV.open(encoding="utf-8-sig", newline="") as handle:
        return tuple(row["prompt"].strip() for row in csv.DictReader(handle) if row["prompt"])


def batch_csv(count: int, *, label: str = "") -> bytes:
    """A ``prompt,seed`` CSV of ``count`` rows: sample prompts in turn, unique seeds."""
    prompts = sample_prompts()
    lines = ["prompt,seed"]
    for number in range(count):
        text = prompts[number % len(prompts)].replace('"', '""')
        lines.append(f'"{text}{label}",{number + 1}')
    return ("\n".join(lines) + "\n").encode("utf-8")


@dataclass
class SimulatorProcess:
    base_url: str
    api_key: str
    process: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/sim/stats", timeout=30) as response:
            return dict(json.load(response))

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds so far of ``pid`` and its children (SeaweedFS runs its parts as one)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def simulator_process(
    *, latency_s: float, max_inflight: int, image_scale: float = 1.0
) -> Iterator[SimulatorProcess]:
    """``serve_forever`` in a child process; yields its URL and key, stops it on exit."""
    code = (
        "from ideogram_pipeline.simulator.server import SimulatorConfig, serve_forever\n"
        f"serve_forever('127.0.0.1', 0, SimulatorConfig(latency_s={latency_s!r}, "
        f"max_inflight={max_inflight!r}, image_scale={image_scale!r}))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        values: dict[str, str] = {}
        assert process.stdout is not None
        while "IDEOGRAM_API_KEY" not in values:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("the simulator process exited before it was ready")
            name, sep, value = line.strip().partition("=")
            if sep:
                values[name] = value
        sim = SimulatorProcess(values["IDEOGRAM_BASE_URL"], values["IDEOGRAM_API_KEY"], process)
        deadline = time.monotonic() + 20
        while True:
            try:
                sim.stats()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield sim
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RssSampler:
    """Samples a process's resident set size every ``interval_s`` on a thread; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def run_child(args: list[str], *, env: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
    """Run ``python args...`` that prints one JSON object last; returns it and its peak RSS."""
    process = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    with RssSampler(process.pid) as sampler:
        out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed ({process.returncode}):\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1]), sampler.peak

"""Perceptual hashes from the run's worker process (runs/fingerprinting.py): the same hash
as in-process, at a lower priority, and never an image lost when the worker is."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ideogram_pipeline.images.fingerprints import perceptual_hash
from ideogram_pipeline.runs.fingerprinting import WORKER_NICENESS, Fingerprinter


def _png(seed: int) -> bytes:
    image = Image.effect_mandelbrot((96, 64), (-2.0 + seed / 10, -1.2, 1.0, 1.2), 60)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def _worker_pid(fingerprints: Fingerprinter) -> int:
    pool = fingerprints._pool
    assert pool is not None
    (pid,) = list(pool._processes)
    return int(pid)


def test_hashes_from_the_worker_match_the_in_process_hash() -> None:
    images = [_png(seed) for seed in range(4)] + [b"not an image"]

    async def hashes() -> tuple[list[str | None], int]:
        with ThreadPoolExecutor(1) as fallback:
            fingerprints = Fingerprinter(fallback)
            try:
                found = await asyncio.gather(*(fingerprints.phash(data) for data in images))
                return list(found), _worker_pid(fingerprints)
            finally:
                fingerprints.close()

    found, pid = asyncio.run(hashes())
    assert found == [perceptual_hash(data) for data in images]
    assert found[-1] is None and all(len(h or "") == 16 for h in found[:-1])
    assert pid != os.getpid()


def test_the_worker_runs_at_a_lower_priority() -> None:
    async def niceness() -> int:
        with ThreadPoolExecutor(1) as fallback:
            fingerprints = Fingerprinter(fallback)
            try:
                await fingerprints.phash(_png(0))
                return os.getpriority(os.PRIO_PROCESS, _worker_pid(fingerprints))
            finally:
                fingerprints.close()

    assert asyncio.run(niceness()) == os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICENESS


def test_a_worker_that_dies_costs_no_hash() -> None:
    """Killed mid-run (the OOM killer, say): the next hashes come from the thread pool."""
    data = _png(1)

    async def after_kill() -> tuple[str | None, str | None]:
        with ThreadPoolExecutor(1) as fallback:
            fingerprints = Fingerprinter(fallback)
            try:
                await fingerprints.phash(data)
                os.kill(_worker_pid(fingerprints), 9)
                first = await fingerprints.phash(data)
                return first, await fingerprints.phash(data)
            finally:
                fingerprints.close()

    assert asyncio.run(after_kill()) == (perceptual_hash(data), perceptual_hash(data))


def test_ctrl_c_is_left_to_the_run_and_the_worker_goes_with_it(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group: the worker ignores it (the run
    stops cleanly and still hashes). A run killed with SIGKILL takes the worker with it."""
    script = (
        "import asyncio, os, sys\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from ideogram_pipeline.runs.fingerprinting import Fingerprinter\n"
        "async def main():\n"
        "    fingerprints = Fingerprinter(ThreadPoolExecutor(1))\n"
        "    await fingerprints.phash(b'warm')\n"
        "    (pid,) = list(fingerprints._pool._processes)\n"
        "    os.kill(pid, signal.SIGINT)\n"
        "    await asyncio.sleep(0.5)\n"
        "    assert (await fingerprints.phash(sys.stdin.buffer.read())) is not None\n"
        "    assert list(fingerprints._pool._processes) == [pid]\n"
        "    print(pid, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "import signal\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], input=_png(2), capture_output=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10  # the worker goes as the run's sentinel closes
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def test_a_run_killed_while_its_worker_starts_leaves_no_worker() -> None:
    """Killed before the worker's start-up ran, the run has already left the worker to
    init: the worker must not take init for the run and wait for it for good (found by
    hand: workers of runs killed in their first second were still there 14 min later)."""
    script = (
        "import os, signal\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from ideogram_pipeline.runs.fingerprinting import Fingerprinter\n"
        "fingerprints = Fingerprinter(ThreadPoolExecutor(1))\n"
        "(pid,) = list(fingerprints._pool._processes)\n"
        "print(pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30  # its start-up (imports) and then one parent check
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"

"""Perceptual hashes from the run's worker process (runs/fingerprinting.py): the same hash
as in-process, at a lower priority, and never an image lost when the worker is."""

from __future__ import annotations

import asyncio
import io
import os
from concurrent.futures import ThreadPoolExecutor

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

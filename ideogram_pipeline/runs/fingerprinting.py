"""Perceptual hashes in a process of their own, at a lower priority than the run.

A pHash decodes the whole image (a 1024x1024 PNG: about 20 ms of inflating and unfiltering)
and shrinks it (5 ms): measured with ``py-spy`` over a 400-row run, it was 44% of the run's
CPU, and with the simulator on the same two cores the run became CPU-bound: each finished
generation waited 18 ms on average to be seen and refilled, against 8 ms with no pHash at
all. In threads of the run's own process it also holds the GIL that the event loop (the
polls and submissions that keep the account's slots busy) needs, and its first call
imported SciPy mid-run.

So one worker process computes them: it imports Pillow, imagehash and SciPy while the run
starts, and runs at a lower priority (``nice``), so the kernel gives the cores to the run
(and the simulator, or the network) first and the hashes take what is left. A pHash is not
in the PNG's chunks, only in the record, so the image is stored while its hash is computed;
the record waits for it. A fingerprint is never worth an image: if the worker cannot be
started or dies, the hash is computed in a thread as before, and an undecodable image gets
``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Executor, ProcessPoolExecutor

from ideogram_pipeline.images.fingerprints import perceptual_hash

__all__ = ["Fingerprinter"]

logger = logging.getLogger(__name__)

#: How much lower than the run the worker runs (``nice`` increment).
WORKER_NICENESS = 10
#: Images waiting for their hash at once: each holds its bytes (1-2 MB) in the queue.
MAX_PENDING = 32


def _start_worker() -> None:
    """In the worker: step back in priority, leave Ctrl-C to the run (a terminal sends it to
    the whole process group; the run stops cleanly, the worker must not die mid-hash), go
    when the run's process does (a SIGKILLed run would otherwise leave it waiting on its
    queue for good), and import what a hash needs before the first image arrives."""
    with contextlib.suppress(OSError):  # not permitted: the hashes come at the run's priority
        os.nice(WORKER_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_run, daemon=True).start()
    for module in ("imagehash", "scipy.fftpack", "PIL.PngImagePlugin"):
        importlib.import_module(module)


def _exit_with_run() -> None:
    """Wait on the run's sentinel (a pipe multiprocessing closes when the run's process
    ends, however it ends) and go. Unlike watching the parent pid, it has no window: a run
    killed while this worker was still starting is seen at once."""
    run = multiprocessing.parent_process()
    if run is not None:
        run.join()
        os._exit(0)


def _warm() -> None:
    """A first task, so the worker is spawned (and imports) while the run starts."""


class Fingerprinter:
    """pHashes of the run's images, from a worker process started at once.

    ``fallback`` is the executor used when the worker is unavailable (the run's CPU pool).
    """

    def __init__(self, fallback: Executor) -> None:
        self.fallback = fallback
        self._pending = asyncio.Semaphore(MAX_PENDING)
        self._pool: ProcessPoolExecutor | None
        try:
            # Spawned, not forked: the run's process has threads (Dagster's, the run's own)
            # whose locks a fork would copy mid-use.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker)
            self._pool.submit(_warm)
        except (OSError, ImportError, RuntimeError) as exc:  # no semaphores, no spawning
            logger.info(f"perceptual hashes computed in threads (no worker process: {exc})")
            self._pool = None

    async def phash(self, data: bytes) -> str | None:
        """The pHash of ``data`` (see :func:`perceptual_hash`)."""
        loop = asyncio.get_running_loop()
        async with self._pending:
            if self._pool is not None:
                try:
                    return await asyncio.wrap_future(self._pool.submit(perceptual_hash, data))
                except Exception as exc:  # the worker died (BrokenExecutor) or was shut down
                    logger.warning(f"perceptual hash worker lost ({exc}); hashing in threads")
                    self._pool = None
            return await loop.run_in_executor(self.fallback, perceptual_hash, data)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

"""The thread pools of one run: blocking work off the event loop, in lanes that never wait
for each other."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

from ideogram_pipeline.runs.fingerprinting import Fingerprinter

__all__ = ["MAX_IO_THREADS", "RunPools"]

T = TypeVar("T")

#: Threads for ledger writes and for uploads (each pool): together within boto3's default
#: connection pool of 32 (storage/s3.py), so no request waits for, or churns, a connection.
MAX_IO_THREADS = 16


class RunPools:
    """Three thread pools of this run's own, not the loop's default executor (min(32, cpus + 4)
    threads shared by everything): a ledger intent, written while its request holds
    in-flight slots, must never queue behind image hashing or uploads. Hashing decodes
    whole images (Pillow releases the GIL while decoding), so it gets one thread per core.
    """

    def __init__(self, max_images: int) -> None:
        self.ledger = ThreadPoolExecutor(
            min(max_images + 4, MAX_IO_THREADS), thread_name_prefix="ideogram-ledger"
        )
        self.io = ThreadPoolExecutor(
            min(max(max_images * 2, 4), MAX_IO_THREADS), thread_name_prefix="ideogram-io"
        )
        self.cpu = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="ideogram-cpu")
        #: Perceptual hashes: a process of their own, started now (fingerprinting.py).
        self.fingerprints = Fingerprinter(self.cpu)

    @staticmethod
    async def run(pool: Executor, fn: Callable[..., T], *args: Any) -> T:
        """``asyncio.to_thread`` on ``pool``: the call sees this task's context variables."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    def close(self) -> None:
        for pool in (self.ledger, self.io, self.cpu):
            pool.shutdown(wait=False, cancel_futures=True)
        self.fingerprints.close()

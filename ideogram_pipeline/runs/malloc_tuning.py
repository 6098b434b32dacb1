"""Keep a long batch's memory flat: give multi-megabyte buffers back to the system.

A batch moves thousands of 1-2 MB images through download, stamping and upload buffers on
several threads. glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB) with
``mmap`` and returns them on ``free``, but its *dynamic* threshold rises to the size of the
largest mmapped block ever freed (up to 32 MiB): after the first image, every image buffer
comes from the per-thread heaps instead, which fragment and rarely shrink. Measured with
``benchmarks/engine_scale.py``: peak RSS grew from 250 MB (500 rows) to 341 MB (3,000 rows)
with the default, and from 214 MB to 260 MB with the threshold pinned.

Pinning the threshold (which also switches off the dynamic adjustment) is what
``MALLOC_MMAP_THRESHOLD_=131072`` does from the environment; :func:`pin_mmap_threshold`
does it from inside the process, once, where glibc is the allocator, and nothing elsewhere.

pyarrow's default pool (mimalloc in the wheels) keeps what each Parquet flush freed: over
3,000 rows it grew 13-28 MB (even with ``release_unused()`` after each flush) against 4-6 MB
with the system allocator, which then also gets the pinned threshold.
:func:`use_system_allocator_for_arrow` switches this process's Arrow allocations to it.

Both change the whole process, so library code never calls them: entry points do, through
:func:`ideogram_pipeline.runs.runner.tune_process_memory` (the CLI's ``run``, a Dagster
op's process, the engine benchmark's child).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["MMAP_THRESHOLD_BYTES", "pin_mmap_threshold", "use_system_allocator_for_arrow"]

#: glibc's own default, kept fixed: blocks this large and above are mapped and unmapped.
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # from <malloc.h>


@functools.cache
def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold for this process; True if it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


@functools.cache
def use_system_allocator_for_arrow() -> None:
    """Make malloc pyarrow's default pool in this process (metadata flushes use it)."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())

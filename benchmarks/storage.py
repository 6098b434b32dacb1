"""Storage throughput and memory: the stores against a raw boto3 loop on the same data.

Starts its own SeaweedFS (``weed mini`` on loopback) and stores N images of about 1.5 MB:

- ``raw boto3``: ``client.put_object(Bucket, Key, Body)`` in a thread pool: the ceiling;
- ``S3Store``: ``put_bytes(create_only=True)`` as the engine calls it (SHA-256 checksum
  verified by the server, ``If-None-Match: *``, Content-Type, Cache-Control, metadata);
- ``LocalStore``: temp file, fsync, link into place.

Both S3 loops share one client (same connection pool and retry config) and the same worker
count. Rounds alternate their order so neither always runs on a warmer server, each phase
starts after ``os.sync()`` so it never pays for flushing the previous one's writes, and the
ratio is taken over all rounds together. Images are made on the fly inside the workers, so
at most ``workers`` images exist at once: peak RSS (sampled every 5 ms) must not grow with
``--images``.

    .venv/bin/python benchmarks/storage.py [--images 500] [--size-mb 1.5] [--workers 16]

Targets: S3Store >= 0.9 x raw boto3; peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import LocalStore
from ideogram_pipeline.storage.s3 import S3Store
from tests.support.seaweed import running_seaweedfs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CACHE_CONTROL = "public, max-age=31536000, immutable"


class ImageMaker:
    """Distinct PNG-like images by index: a few random blocks, each image stamped with its
    index, so making one costs a copy (~0.1 ms), not a random generator (~5 ms on 1.5 MB)."""

    def __init__(self, size: int, blocks: int = 8) -> None:
        self.blocks = [os.urandom(size - 16) for _ in range(blocks)]

    def __call__(self, index: int) -> bytes:
        return PNG_SIGNATURE + index.to_bytes(8, "big") + self.blocks[index % len(self.blocks)]


class PeakRSS:
    """Samples this process's resident memory in a thread while the block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._process = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Result:
    label: str
    seconds: float
    megabytes: float
    peak_rss_mb: float

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds


def measure(
    label: str,
    write: Callable[[str, bytes], None],
    make: ImageMaker,
    count: int,
    workers: int,
) -> Result:
    def task(index: int) -> int:
        data = make(index)
        write(f"images/{index:06d}.png", data)
        return len(data)

    os.sync()  # the previous phase's dirty pages must not be flushed on this one's clock
    with PeakRSS() as rss, ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        total = sum(pool.map(task, range(count)))
        seconds = time.perf_counter() - started
    return Result(label, seconds, total / 1e6, rss.peak / 1e6)


def raw_writer(client: Any, bucket: str, prefix: str) -> Callable[[str, bytes], None]:
    """The ceiling: a bare ``put_object``, no checksum, no headers, no condition."""

    def write(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)

    return write


def store_writer(store: S3Store | LocalStore) -> Callable[[str, bytes], None]:
    """What the engine does for each image."""

    def write(key: str, data: bytes) -> None:
        store.put_bytes(
            key,
            data,
            content_type="image/png",
            cache_control=CACHE_CONTROL,
            metadata={"record-id": key, "seed": "42", "model": "V_3"},
            create_only=True,
        )

    return write


def report(label: str, round_: int, result: Result) -> None:
    print(
        f"  round {round_ + 1} {label:<10} {result.mb_per_s:8.1f} MB/s "
        f"({result.seconds:.2f} s, peak RSS {result.peak_rss_mb:.0f} MB)"
    )


def run(args: argparse.Namespace, workdir: Path, make: ImageMaker) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {"raw boto3": [], "S3Store": [], "LocalStore": []}
    with running_seaweedfs(workdir / "seaweedfs") as server:
        print(f"SeaweedFS {server.endpoint_url} started in {server.startup_seconds:.2f} s")
        server.create_bucket("bench")

        def s3_store(prefix: str) -> S3Store:
            env = {**server.env(), "IDEOGRAM_STORAGE": f"s3://bench/{prefix}"}
            return S3Store.from_settings(load_settings(env))

        # SeaweedFS allocates volumes on the first writes: keep that out of round 1.
        measure("warm-up", s3_store("warm-up").put_bytes, make, 4 * args.workers, args.workers)
        for round_ in range(args.rounds):
            store = s3_store(f"store-{round_}")
            phases = [
                ("raw boto3", raw_writer(store.client, "bench", f"raw-{round_}")),
                ("S3Store", store_writer(store)),
            ]
            for label, write in phases if round_ % 2 == 0 else phases[::-1]:
                results[label].append(measure(label, write, make, args.images, args.workers))
                report(label, round_, results[label][-1])
    for round_ in range(args.rounds):
        local = LocalStore(workdir / f"local-{round_}")
        results["LocalStore"].append(
            measure("LocalStore", store_writer(local), make, args.images, args.workers)
        )
        report("LocalStore", round_, results["LocalStore"][-1])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size-mb", type=float, default=1.5)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="working directory, kept (default: a temp dir, removed)")
    args = parser.parse_args(argv)

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="ideogram-bench-"))
    baseline = psutil.Process().memory_info().rss / 1e6
    try:
        results = run(args, workdir, ImageMaker(int(args.size_mb * 1e6)))
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)

    def aggregate(label: str) -> float:
        """All rounds together: total MB over total seconds."""
        rs = results[label]
        return sum(r.megabytes for r in rs) / sum(r.seconds for r in rs)

    pairs = zip(results["S3Store"], results["raw boto3"], strict=True)
    per_round = ", ".join(f"{s.mb_per_s / r.mb_per_s:.2f}" for s, r in pairs)
    ratio = aggregate("S3Store") / aggregate("raw boto3")
    peak = max(r.peak_rss_mb for rs in results.values() for r in rs)
    print(
        f"\n{args.images} images x {args.size_mb} MB, {args.workers} workers, "
        f"{args.rounds} rounds aggregated:"
    )
    for label in results:
        print(f"  {label:<10} {aggregate(label):8.1f} MB/s")
    print(f"  S3Store / raw boto3 = {ratio:.2f}  (target >= 0.90; per round: {per_round})")
    print(f"  peak RSS while storing: {peak:.0f} MB (baseline {baseline:.0f} MB; target < 300)")
    return 0 if ratio >= 0.9 and peak < 300 else 1


if __name__ == "__main__":
    sys.exit(main())

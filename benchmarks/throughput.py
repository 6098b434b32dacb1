"""Engine throughput against the bundled simulator, as a ratio of the theoretical maximum.

With an in-flight limit of N images and a generation latency of L seconds, no client can
do better than N / L images per second. This script runs the real engine (generate ->
download -> verify -> store -> Parquet) on a temporary local root and prints the measured
rate next to that ceiling, both from the same run.

    .venv/bin/python benchmarks/throughput.py [--prompts 500] [--inflight 10] [--latency 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.runs.engine import run_batch
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore

TARGET_RATIO = 0.9


def _batch_csv(count: int) -> bytes:
    lines = ["prompt,seed"]
    lines += [f'"A product photo of item {n}, studio lighting",{n}' for n in range(count)]
    return ("\n".join(lines) + "\n").encode()


async def _run(args: argparse.Namespace, root: Path, base_url: str, api_key: str) -> float:
    batch = parse_batch(_batch_csv(args.prompts), key="throughput")
    async with IdeogramClient(base_url, api_key, max_inflight=args.inflight) as client:
        started = time.perf_counter()
        summary = await run_batch(batch, client, LocalStore(root), api_mode=args.api_mode)
        elapsed = time.perf_counter() - started
    assert summary.stored == args.prompts, summary.as_dict()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--inflight", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--image-scale", type=float, default=1.0)
    parser.add_argument("--api-mode", choices=["async", "sync"], default="async")
    args = parser.parse_args()

    config = SimulatorConfig(
        latency_s=args.latency, max_inflight=args.inflight, image_scale=args.image_scale
    )
    with running_simulator(config) as sim, tempfile.TemporaryDirectory() as tmp:
        elapsed = asyncio.run(_run(args, Path(tmp), sim.base_url, sim.api_key))
        stats = sim.stats
        rate = args.prompts / elapsed
        ceiling = args.inflight / args.latency
        ratio = rate / ceiling
        print(f"prompts               {args.prompts}")
        print(f"in-flight limit       {args.inflight} images, latency {args.latency} s")
        print(f"api mode              {args.api_mode}")
        print(f"elapsed               {elapsed:.2f} s")
        print(f"throughput            {rate:.2f} images/s")
        print(f"theoretical maximum   {ceiling:.2f} images/s (in-flight limit / latency)")
        print(f"ratio                 {ratio:.3f} (target >= {TARGET_RATIO})")
        print(f"simulator 429s        {stats.rate_limited}")
        print(f"peak images in flight {stats.max_images_inflight_seen}")
        print(f"bytes stored          {sum(p.stat().st_size for p in Path(tmp).rglob('*.png'))}")


if __name__ == "__main__":
    main()

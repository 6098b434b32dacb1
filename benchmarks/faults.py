"""Throughput under faults, as ratios of a fault-free run measured in the same invocation.

Three runs of the real engine against the bundled simulator (async v2 API, local store):

- fault-free: the baseline;
- 5% of generations answered 500/503 (retried with backoff);
- 429 pressure: the client believes the account allows twice what it does.

    .venv/bin/python benchmarks/faults.py [--prompts 300] [--inflight 10] [--latency 0.5]
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


def _csv(count: int, label: str) -> bytes:
    lines = ["prompt,seed"] + [f'"{label} item {n}, studio photo",{n}' for n in range(count)]
    return ("\n".join(lines) + "\n").encode()


def _measure(args: argparse.Namespace, label: str, *, error_rate: float, client_limit: int):
    config = SimulatorConfig(
        latency_s=args.latency,
        max_inflight=args.inflight,
        server_error_rate=error_rate,
        image_scale=args.image_scale,
    )
    with running_simulator(config) as sim, tempfile.TemporaryDirectory() as tmp:

        async def go():
            batch = parse_batch(_csv(args.prompts, label), key=label)
            async with IdeogramClient(sim.base_url, sim.api_key, max_inflight=client_limit) as c:
                started = time.perf_counter()
                summary = await run_batch(batch, c, LocalStore(Path(tmp)))
                return summary, time.perf_counter() - started

        summary, elapsed = asyncio.run(go())
        assert summary.stored == args.prompts, summary.as_dict()
        return args.prompts / elapsed, dict(summary.retries), sim.stats.billed_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--inflight", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--image-scale", type=float, default=0.5)
    args = parser.parse_args()
    ceiling = args.inflight / args.latency
    base, _, base_billed = _measure(args, "baseline", error_rate=0.0, client_limit=args.inflight)
    rows = [("fault-free", base, {}, base_billed)]
    rate, retries, billed = _measure(args, "errors", error_rate=0.05, client_limit=args.inflight)
    rows.append(("5% 5xx", rate, retries, billed))
    rate, retries, billed = _measure(
        args, "pressure", error_rate=0.0, client_limit=2 * args.inflight
    )
    rows.append(("429 pressure (client limit x2)", rate, retries, billed))
    print(f"{args.prompts} prompts, {args.inflight} in flight, {args.latency} s latency")
    print(f"theoretical maximum {ceiling:.2f} images/s")
    for name, value, why, paid in rows:
        print(
            f"{name:32} {value:6.2f} images/s  ratio to fault-free {value / base:.3f}  "
            f"to maximum {value / ceiling:.3f}  billed {paid}  retries {why}"
        )


if __name__ == "__main__":
    main()

"""A whole ``ideogram-pipeline run`` against a minimal asyncio client, same simulator, same run.

Issue 16 asks that our bookkeeping never hold an in-flight slot: a run of 1,000 one-image
rows at 10 in flight and 0.5 s latency should reach at least 0.95 of a client that does only
generate, download and write-to-disk. Both run as subprocesses against one simulator in this
process (so neither shares the simulator's GIL), one after the other:

- the minimal client: ``httpx.AsyncClient``, a semaphore of 10, ``POST /v1/ideogram-v3/generate``
  (one round trip holding the slot for the latency), 429s retried after 50 ms, the image
  downloaded and written to a file; nothing else;
- the pipeline: ``ideogram-pipeline run CSV`` through Dagster (start-up included), default
  settings (asynchronous v2 API, ledger and journal, Delta history, local storage).

    .venv/bin/python benchmarks/run_vs_minimal.py [--rows 1000] [--inflight 10] [--latency 0.5]

The figure goes to BENCHMARKS.md ("Whole run against a minimal client").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TARGET_RATIO = 0.95


def _prompt(n: int) -> str:
    return f"A product photo of item {n}, studio lighting"


async def _minimal(base_url: str, api_key: str, rows: int, inflight: int, out: Path) -> None:
    slots = asyncio.Semaphore(inflight)
    limits = httpx.Limits(max_connections=inflight * 2)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Api-Key": api_key}, timeout=60, limits=limits
    ) as http:

        async def one(n: int) -> None:
            fields = [("prompt", (None, _prompt(n))), ("seed", (None, str(n)))]
            async with slots:
                while True:
                    answer = await http.post("/v1/ideogram-v3/generate", files=fields)
                    if answer.status_code != 429:
                        break
                    await asyncio.sleep(0.05)
            answer.raise_for_status()
            image = await http.get(answer.json()["data"][0]["url"])
            image.raise_for_status()
            await asyncio.to_thread((out / f"{n}.png").write_bytes, image.content)

        await asyncio.gather(*(one(n) for n in range(rows)))


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{cmd[2:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--minimal-client", nargs=3, metavar=("URL", "KEY", "DIR"))
    args = parser.parse_args()
    if args.minimal_client:  # the child process of the minimal client
        url, key, out = args.minimal_client
        asyncio.run(_minimal(url, key, args.rows, args.inflight, Path(out)))
        return

    from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator

    config = SimulatorConfig(latency_s=args.latency, max_inflight=args.inflight)
    with tempfile.TemporaryDirectory() as tmp, running_simulator(config) as sim:
        root = Path(tmp)
        csv = root / "bench.csv"
        lines = ["prompt,seed"] + [f'"{_prompt(n)}",{n}' for n in range(args.rows)]
        csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
        (root / "minimal").mkdir()
        (root / "home").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
        minimal_s = _timed(
            [
                sys.executable,
                __file__,
                "--rows",
                str(args.rows),
                "--inflight",
                str(args.inflight),
                "--minimal-client",
                sim.base_url,
                sim.api_key,
                str(root / "minimal"),
            ],
            env,
        )
        billed_minimal = sim.stats.billed_images
        env |= {
            "IDEOGRAM_API_KEY": sim.api_key,
            "IDEOGRAM_BASE_URL": sim.base_url,
            "IDEOGRAM_MAX_INFLIGHT": str(args.inflight),
            "IDEOGRAM_STORAGE": str(root / "storage"),
            "DAGSTER_HOME": str(root / "home"),
        }
        run = [sys.executable, "-c", "from ideogram_pipeline.cli import main; main()", "run"]
        pipeline_s = _timed([*run, str(csv)], env)
        billed_pipeline = sim.stats.billed_images - billed_minimal
    ceiling_s = args.rows * args.latency / args.inflight
    ratio = minimal_s / pipeline_s
    print(f"rows {args.rows}, {args.inflight} in flight, latency {args.latency} s")
    print(f"  theoretical floor      {ceiling_s:7.1f} s")
    print(f"  minimal asyncio client {minimal_s:7.1f} s  ({billed_minimal} images billed)")
    print(f"  ideogram-pipeline run  {pipeline_s:7.1f} s  ({billed_pipeline} images billed)")
    verdict = "meets" if ratio >= TARGET_RATIO else "below"
    print(f"  pipeline / minimal     {ratio:7.2f}  ({verdict} the {TARGET_RATIO} target)")


if __name__ == "__main__":
    main()

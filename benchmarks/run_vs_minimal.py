"""A whole ``ideogram-pipeline`` process against a minimal asyncio client, same simulator.

Issue 16 asks that our bookkeeping never hold an in-flight slot: a run of 1,000 one-image
rows at 10 in flight and 0.5 s latency should reach at least 0.95 of a client that does only
generate, download and write-to-disk. Issue 19 asks the same of ``apply OPERATION``: an
operation over stored images. Both sides run as subprocesses against one simulator in this
process (so neither shares the simulator's GIL), one after the other:

- the minimal client: ``httpx.AsyncClient``, a semaphore of ``--inflight``, one POST holding
  the slot for the latency, 429s retried after 50 ms, the image downloaded and written to a
  file; nothing else. With ``--operation upscale`` (or ``remix``) it first reads each stored
  image's bytes from the storage root and sends them as the multipart image part
  (``image_file`` and an ``image_request`` JSON part for ``/upscale``; ``image`` and
  ``prompt`` for ``/v1/ideogram-v3/remix``);
- the pipeline: ``ideogram-pipeline run CSV``, or ``apply OPERATION --where true``, through
  Dagster (start-up included), default settings (ledger and journal, Delta history, local
  storage).

For an operation the history is made first, untimed: a ``run`` of ``--rows`` rows against
a second simulator with no latency. Its images are the sources of both timed sides.

    .venv/bin/python benchmarks/run_vs_minimal.py [--rows 1000] [--inflight 10] [--latency 0.5]
    .venv/bin/python benchmarks/run_vs_minimal.py --warm   # the instance used before
    .venv/bin/python benchmarks/run_vs_minimal.py --operation upscale --rows 300

The figures go to BENCHMARKS.md ("Whole run against a minimal client", "Operations on
stored images").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

TARGET_RATIO = 0.95
#: What the minimal client sends per operation: path, image part, form fields.
OPERATION_FORMS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "upscale": ("/upscale", "image_file", [("image_request", "{}")]),
    "remix": ("/v1/ideogram-v3/remix", "image", [("prompt", "The same scene at dusk")]),
}
_PIPELINE = [sys.executable, "-c", "from ideogram_pipeline.cli import main; main()"]


def _prompt(n: int) -> str:
    return f"A product photo of item {n}, studio lighting"


def _stored_images(storage: Path) -> list[Path]:
    """The images a ``run`` stored (not references, contact sheets or the history)."""
    return sorted((storage / "images").rglob("*.png"))


#: One multipart part: ``(name, (filename or None, content, media type?))``.
Part = tuple[str, tuple[str | None, str | bytes] | tuple[str | None, str | bytes, str]]


@dataclass(frozen=True)
class Call:
    """One request of the minimal client: where it goes, its parts, where its image goes."""

    path: str
    parts: list[Part]
    out: Path


async def _each_in_slot(
    base_url: str, api_key: str, inflight: int, calls: list[Callable[[], Awaitable[Call]]]
) -> None:
    """Per call: build its body, POST it holding one of ``inflight`` slots, download the
    first image of the answer and write it where the call says."""
    slots = asyncio.Semaphore(inflight)
    limits = httpx.Limits(max_connections=inflight * 2)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Api-Key": api_key}, timeout=60, limits=limits
    ) as http:

        async def one(build: Callable[[], Awaitable[Call]]) -> None:
            async with slots:
                call = await build()
                while True:
                    answer = await http.post(call.path, files=call.parts)
                    if answer.status_code != 429:
                        break
                    await asyncio.sleep(0.05)
            answer.raise_for_status()
            image = await http.get(answer.json()["data"][0]["url"])
            image.raise_for_status()
            await asyncio.to_thread(call.out.write_bytes, image.content)

        await asyncio.gather(*(one(build) for build in calls))


async def _generate_call(n: int, out: Path) -> Call:
    parts: list[Part] = [("prompt", (None, _prompt(n))), ("seed", (None, str(n)))]
    return Call("/v1/ideogram-v3/generate", parts, out / f"{n}.png")


async def _operation_call(operation: str, source: Path, out: Path) -> Call:
    """The operation on ``source``: its bytes are read here, inside the slot, as sent."""
    path, image_part, form = OPERATION_FORMS[operation]
    data = await asyncio.to_thread(source.read_bytes)
    parts: list[Part] = [(name, (None, value)) for name, value in form]
    parts.append((image_part, (source.name, data, "image/png")))
    return Call(path, parts, out / source.name)


def _minimal(args: argparse.Namespace) -> None:
    """The minimal client's process: generate ``--rows`` images, or run the operation on
    every image stored under the storage root."""
    url, key, out_dir = args.minimal_client
    out = Path(out_dir)
    calls: list[Callable[[], Awaitable[Call]]]
    if args.operation == "generate":
        calls = [partial(_generate_call, n, out) for n in range(args.rows)]
    else:
        sources = _stored_images(Path(args.storage))
        calls = [partial(_operation_call, args.operation, source, out) for source in sources]
    asyncio.run(_each_in_slot(url, key, args.inflight, calls))


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{cmd[2:5]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


def _pipeline_env(sim_url: str, sim_key: str, inflight: int, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDEOGRAM_")}
    return env | {
        "IDEOGRAM_API_KEY": sim_key,
        "IDEOGRAM_BASE_URL": sim_url,
        "IDEOGRAM_MAX_INFLIGHT": str(inflight),
        "IDEOGRAM_STORAGE": str(root / "storage"),
        "DAGSTER_HOME": str(root / "home"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--operation", choices=["generate", *OPERATION_FORMS], default="generate")
    parser.add_argument("--minimal-client", nargs=3, metavar=("URL", "KEY", "DIR"))
    parser.add_argument("--storage", help="(minimal client) the storage root of the sources")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="a Dagster instance (the repository's dagster.yaml) and a storage root that "
        "ran one batch before, as for a user's every run after the first; default: both new",
    )
    args = parser.parse_args()
    if args.minimal_client:  # the child process of the minimal client
        _minimal(args)
        return

    from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator

    config = SimulatorConfig(latency_s=args.latency, max_inflight=args.inflight)
    operation = args.operation
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv = root / "bench.csv"
        lines = ["prompt,seed"] + [f'"{_prompt(n)}",{n}' for n in range(args.rows)]
        csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
        (root / "minimal").mkdir()
        (root / "home").mkdir()
        setup_s = 0.0
        if args.warm:  # the instance and the root as an earlier batch left them, untimed
            shutil.copy(Path(__file__).parent.parent / "dagster.yaml", root / "home")
            earlier = root / "earlier.csv"
            earlier.write_text('prompt\n"A warm-up batch"\n', encoding="utf-8")
            with running_simulator(SimulatorConfig(latency_s=0.0)) as setup_sim:
                env = _pipeline_env(setup_sim.base_url, setup_sim.api_key, args.inflight, root)
                _timed([*_PIPELINE, "run", str(earlier)], env)
        if operation != "generate":  # the history the operation works on, untimed
            fast = SimulatorConfig(latency_s=0.0, max_inflight=args.inflight)
            with running_simulator(fast) as setup_sim:
                env = _pipeline_env(setup_sim.base_url, setup_sim.api_key, args.inflight, root)
                setup_s, _ = _timed([*_PIPELINE, "run", str(csv)], env)
            sources = len(_stored_images(root / "storage"))
            if sources != args.rows:
                raise SystemExit(f"the setup run stored {sources} images, not {args.rows}")
        with running_simulator(config) as sim:
            env = _pipeline_env(sim.base_url, sim.api_key, args.inflight, root)
            minimal_cmd = [sys.executable, __file__, "--rows", str(args.rows)]
            minimal_cmd += ["--inflight", str(args.inflight), "--operation", operation]
            minimal_cmd += ["--storage", str(root / "storage"), "--minimal-client"]
            minimal_cmd += [sim.base_url, sim.api_key, str(root / "minimal")]
            started_load = os.getloadavg()
            minimal_s, _ = _timed(minimal_cmd, env)
            billed_minimal = sim.stats.billed_images
            if operation == "generate":
                pipeline_cmd = [*_PIPELINE, "run", str(csv)]
            else:
                pipeline_cmd = [*_PIPELINE, "apply", operation, "--where", "true"]
                if operation == "remix":
                    pipeline_cmd += ["--prompt", dict(OPERATION_FORMS["remix"][2])["prompt"]]
            pipeline_s, summary = _timed(pipeline_cmd, env)
            billed_pipeline = sim.stats.billed_images - billed_minimal
            by_route = sim.stats.snapshot()["billed_by_route"]
    floor_s = args.rows * args.latency / args.inflight
    ratio = minimal_s / pipeline_s
    loads = "/".join(f"{v:.1f}" for v in started_load) + " -> "
    loads += "/".join(f"{v:.1f}" for v in os.getloadavg())
    state = "an instance and root used before (--warm)" if args.warm else "a new instance and root"
    print(f"{operation}: rows {args.rows}, {args.inflight} in flight, latency {args.latency} s")
    print(f"  {state}")
    print(f"  load average (1/5/15 min) {loads}")
    if setup_s:
        print(f"  (untimed setup: run of {args.rows} rows at no latency, {setup_s:.1f} s)")
    command = "run" if operation == "generate" else f"apply {operation}"
    print(f"  theoretical floor      {floor_s:7.1f} s")
    print(f"  minimal asyncio client {minimal_s:7.1f} s  ({billed_minimal} images billed)")
    label = f"ideogram-pipeline {command}"
    print(f"  {label:<22} {pipeline_s:7.1f} s  ({billed_pipeline} images billed)")
    print(f"  billed by route        {json.dumps(by_route)}")
    verdict = "meets" if ratio >= TARGET_RATIO else "below"
    print(f"  pipeline / minimal     {ratio:7.2f}  ({verdict} the {TARGET_RATIO} target)")
    print("  pipeline summary: " + " | ".join(summary.strip().splitlines()[-4:]))
    if billed_minimal != args.rows or billed_pipeline != args.rows:
        raise SystemExit(f"billed {billed_minimal} and {billed_pipeline}, not {args.rows} each")


if __name__ == "__main__":
    main()

"""Start-up costs a person feels: the CLI and the Dagster code location.

Each figure is the median wall time of ``--repeat`` fresh processes (what a shell user or
``dagster dev`` pays), next to a baseline from the same run:

- ``ideogram-pipeline --help`` and ``query`` / ``search`` on a small history (a few
  hundred records in the Delta tables, written by ``history_gen.py``), against a bare
  ``python -c pass``;
- ``import ideogram_pipeline.definitions`` (what ``dagster definitions validate`` and the
  webserver load), against importing ``dagster`` and ``dagster_aws.s3`` alone.

    .venv/bin/python benchmarks/cli_scale.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_support import REPO, load_average

BIN = Path(sys.executable).parent
CLI_TARGET_S = 0.5


def _median_seconds(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    cli = str(BIN / "ideogram-pipeline")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "history"
        subprocess.run(
            [sys.executable, "benchmarks/history_gen.py", str(root), "--records", "500"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        env = {**os.environ, "IDEOGRAM_STORAGE": str(root)}
        print(f"load average {load_average()} (2 cores); median of {args.repeat} processes")
        python = _median_seconds([sys.executable, "-c", "pass"], env, args.repeat)
        cases = {
            "ideogram-pipeline --help": [cli, "--help"],
            "ideogram-pipeline query (500 records)": [
                cli,
                "query",
                "SELECT model, count(*) FROM generations GROUP BY ALL",
            ],
            "ideogram-pipeline search (500 records)": [cli, "search", "portrait", "--limit", "5"],
        }
        for name, cmd in cases.items():
            seconds = _median_seconds(cmd, env, args.repeat)
            print(
                f"{name:40s} {seconds:6.2f} s  ({seconds / python:4.1f}x bare python "
                f"{python:.2f} s; target < {CLI_TARGET_S} s)",
                flush=True,
            )
        dagster = _median_seconds(
            [sys.executable, "-c", "import dagster, dagster_aws.s3"], env, args.repeat
        )
        defs = _median_seconds(
            [sys.executable, "-c", "import ideogram_pipeline.definitions"], env, args.repeat
        )
        print(
            f"{'import ideogram_pipeline.definitions':40s} {defs:6.2f} s  ({defs / dagster:4.2f}x "
            f"importing dagster + dagster_aws alone, {dagster:.2f} s)"
        )
        print(f"load average at end {load_average()}")


if __name__ == "__main__":
    main()

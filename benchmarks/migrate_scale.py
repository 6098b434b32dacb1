"""``ideogram-pipeline migrate`` at scale: an old-layout history into the Delta tables.

On a copy of a history written by ``history_gen.py --legacy`` (Parquet under
``metadata/generations/``, hard-linked so the source stays untouched), times the whole
``migrate`` process (listing, reading, the old views' rules, MERGE into both tables, the
per-batch verification, the markers), then a second run (idempotent: nothing to import,
every batch skipped by its marker), and reads the tables' row counts back with DuckDB.
Rows per second is old-layout records / wall seconds of the first run.

    .venv/bin/python benchmarks/history_gen.py /tmp/bench-legacy-1m --legacy
    .venv/bin/python benchmarks/migrate_scale.py /tmp/bench-legacy-1m [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_support import load_average

CLI = str(Path(sys.executable).parent / "ideogram-pipeline")


def _timed_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system) and output of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/tmp")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:])} failed: {done.stderr.strip()[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout + done.stderr


def _counts(root: Path) -> dict[str, int]:
    import duckdb

    from ideogram_pipeline.history.duckdb_s3 import load_extension

    con = duckdb.connect()
    load_extension(con, "delta")
    out = {}
    for name in ("generations", "generation_records"):
        path = str(root / "history" / name).replace("'", "''")
        out[name] = con.execute(f"SELECT count(*) FROM delta_scan('{path}')").fetchone()[0]
    con.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="an old-layout history (history_gen.py --legacy)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    source = Path(args.root)
    legacy = list((source / "metadata").rglob("*.parquet"))
    with tempfile.TemporaryDirectory(prefix="bench-migrate-", dir="/tmp") as tmp:
        root = Path(tmp) / "root"
        # Only the old layout: a root migrated before also holds tables and markers.
        shutil.copytree(source / "metadata", root / "metadata", copy_function=os.link)
        env = {**os.environ, "IDEOGRAM_STORAGE": str(root)}
        print(f"{len(legacy)} old-layout files; load average {load_average()} (2 cores)")
        results: dict[str, Any] = {"files": len(legacy), "load_start": load_average()}
        for label in ("first run", "second run"):
            wall, cpu, output = _timed_process([CLI, "migrate"], env)
            summary = [line for line in output.splitlines() if line.startswith("migrated")]
            found = re.search(r"(\d+) records in", summary[-1]) if summary else None
            records = int(found.group(1)) if found else 0
            rate = records / wall if wall else 0.0
            results[label] = {
                "wall_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
                "summary": summary[-1] if summary else output.strip().splitlines()[-1],
                "records_per_s": round(rate),
                "load_after": load_average(),
            }
            print(
                f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU; {records} records -> "
                f"{rate:,.0f} records/s (whole process); load {load_average()}\n"
                f"  {results[label]['summary']}",
                flush=True,
            )
        results["tables"] = _counts(root)
        print(f"tables after: {results['tables']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

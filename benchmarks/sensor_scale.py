"""The prompts sensor with thousands of batch files: tick time and what grows.

For each ``--files`` count, CSV files of ``--rows`` prompts are written to a temporary
prompts folder, and ``prompts_sensor`` is evaluated against a real (SQLite) Dagster
instance, as the daemon would:

1. first tick: every file new (hashed, one bulk partition add, one run request each);
   the partition add is then applied to the instance, as the daemon does;
2. quiet tick: nothing changed (only directory listing and ``stat``);
3. edit tick: 10 files edited.

Baseline from the same run: reading and hashing every file once, which the sensor used to
do on every tick. Also timed: listing the partitions back (``get_dynamic_partitions``).

    .venv/bin/python benchmarks/sensor_scale.py [--files 500,1000,2000] [--rows 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_support import load_average, sample_prompts

TICK_TARGET_S = 5.0


def _write_files(folder: Path, count: int, rows: int) -> None:
    prompts = sample_prompts()
    for number in range(count):
        lines = ["prompt,seed"] + [
            f'"{prompts[(number + r) % len(prompts)].replace(chr(34), "")}",{r}'
            for r in range(rows)
        ]
        (folder / f"batch-{number:05d}.csv").write_text("\n".join(lines) + "\n", "utf-8")
    past = time.time() - 3600  # written an hour ago: outside the sensor's racy window
    for path in folder.iterdir():
        os.utime(path, (past, past))


def _tick(instance: object, cursor: str | None) -> tuple[float, object]:
    import dagster as dg

    from ideogram_pipeline.definitions import defs
    from ideogram_pipeline.defs.batches.sensors import prompts_sensor
    from ideogram_pipeline.defs.resources import build_resources

    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=build_resources()
    ) as context:
        start = time.perf_counter()
        result = prompts_sensor(context)
        return time.perf_counter() - start, result


def measure(count: int, rows: int) -> dict[str, float]:
    import dagster as dg

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test(temp_dir=tmp) as instance:
        folder = Path(tmp) / "prompts"
        folder.mkdir()
        _write_files(folder, count, rows)
        os.environ["IDEOGRAM_PROMPTS_DIR"] = str(folder)
        os.environ["IDEOGRAM_STORAGE"] = str(Path(tmp) / "data")  # no history yet

        start = time.perf_counter()
        for path in sorted(folder.glob("*.csv")):
            hashlib.sha256(path.read_bytes()).hexdigest()
        hash_all = time.perf_counter() - start

        first_s, first = _tick(instance, None)
        start = time.perf_counter()
        for request in first.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        add_s = time.perf_counter() - start
        quiet_s, quiet = _tick(instance, first.cursor)
        for path in sorted(folder.glob("*.csv"))[:10]:
            path.write_text(path.read_text("utf-8") + '"one more prompt",99\n', "utf-8")
            past = time.time() - 60
            os.utime(path, (past, past))
        edit_s, edited = _tick(instance, quiet.cursor)
        start = time.perf_counter()
        listed = instance.get_dynamic_partitions("batches")
        list_s = time.perf_counter() - start
        assert len(first.run_requests) == count and len(listed) == count
        assert not quiet.run_requests and len(edited.run_requests) == 10
        return {
            "files": count,
            "hash_all_s": round(hash_all, 3),
            "first_tick_s": round(first_s, 3),
            "partition_add_s": round(add_s, 3),
            "quiet_tick_s": round(quiet_s, 3),
            "edit_tick_s": round(edit_s, 3),
            "list_partitions_s": round(list_s, 4),
            "cursor_kb": round(len(edited.cursor) / 1024, 1),
            "run_requests_first": len(first.run_requests),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="500,1000,2000")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    print(f"load average {load_average()} (2 cores)")
    results = []
    for count in (int(n) for n in args.files.split(",")):
        figures = measure(count, args.rows)
        results.append(figures)
        print(
            f"{count:5d} files: first tick {figures['first_tick_s']:.2f} s "
            f"(+ bulk partition add {figures['partition_add_s']:.2f} s), quiet tick "
            f"{figures['quiet_tick_s']:.3f} s, 10 edited {figures['edit_tick_s']:.3f} s "
            f"(target < {TICK_TARGET_S:.0f} s); hashing every file, as each tick used to: "
            f"{figures['hash_all_s']:.3f} s -> quiet tick / that = "
            f"{figures['quiet_tick_s'] / max(figures['hash_all_s'], 1e-9):.2f}; list partitions "
            f"{figures['list_partitions_s'] * 1000:.0f} ms; cursor {figures['cursor_kb']} KB",
            flush=True,
        )
    print(f"load average at end {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

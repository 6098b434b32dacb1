"""What a write to the history costs at scale: one metadata flush, one tag update.

On a copy of a history written by ``history_gen.py`` (the Delta tables; data files are
hard-linked, never changed in place by Delta, and the logs copied), each figure the
median of ``--repeat``:

- **flush**: :meth:`HistoryTables.write` as the engine calls it every
  ``IDEOGRAM_FLUSH_EVERY`` (500) records: an append to ``generation_records`` and a MERGE
  into ``generations`` pruned to the batch. Timed for 500 new records of a new batch, 500
  more records of that batch (the MERGE then has a partition to match against), and a
  1-record flush (the end of a batch). Baseline in the same run: what the old layout's
  flush did, one zstd Parquet file of the same 500 records written to the folder.
  Each flush commits two table versions; a checkpoint every 50 commits is part of the cost
  and shows in the maximum.
- **tag**: :func:`ideogram_pipeline.history.tags.change_tags` on one id (in process), and
  the whole ``ideogram-pipeline tag ID --add x`` process (which also resolves the id
  prefix and prints the tags).

    .venv/bin/python benchmarks/history_writes.py /tmp/bench-h1m [--repeat 15] [--json F]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from history_gen import LEGACY_SCHEMA, HistoryMaker
from scale_support import REPO, load_average

from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, HistoryTables
from ideogram_pipeline.settings import load_settings

CLI = str(Path(sys.executable).parent / "ideogram-pipeline")


def copy_history(source: Path, target: Path) -> None:
    """A writable copy of a local history: data files hard-linked, logs copied."""

    def link_or_copy(src: str, dst: str) -> None:
        if "_delta_log" in Path(src).parts:
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)

    shutil.copytree(source / "history", target / "history", copy_function=link_or_copy)


def _median_ms(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1000:6.0f} ms, max {max(times) * 1000:6.0f} ms"


def _records(maker: HistoryMaker, count: int, key: str) -> list[list[dict[str, Any]]]:
    """Records of a realistic batch, in flushes of ``count`` (as the engine buffers them)."""
    batch = next(maker.batches(date(2025, 6, 1), 1))
    records = [dict(r) for run in batch.runs for r in run]
    for record in records:
        record["batch_name"] = f"{key}.csv"
    return [records[i : i + count] for i in range(0, len(records) - count + 1, count)]


def measure_flushes(settings: Any, repeat: int, root: Path) -> dict[str, Any]:
    tables = HistoryTables(settings)
    maker = HistoryMaker(lambda key: str(root / key), seed=11, batch_mu=7.6)
    out: dict[str, list[float]] = {"new batch, 500": [], "same batch, 500 more": [], "1 record": []}
    out["old layout: one Parquet file of 500"] = []
    import pyarrow as pa
    import pyarrow.parquet as pq

    def timed(fn: Callable[..., object], *args: Any) -> float:
        start = time.perf_counter()
        fn(*args)
        return time.perf_counter() - start

    for number in range(repeat):
        key = f"bench-flush-{number:04d}"
        flushes = _records(maker, 500, key)
        while len(flushes) < 3:
            flushes = _records(maker, 500, key)
        first, second, last = flushes[0], flushes[1], flushes[2][:1]

        def typed(rows: list[dict[str, Any]], key: str = key) -> list[GenerationRecord]:
            return [GenerationRecord.from_row({**r, "batch": key}) for r in rows]

        out["new batch, 500"].append(timed(tables.write, key, typed(first)))
        out["same batch, 500 more"].append(timed(tables.write, key, typed(second)))
        out["1 record"].append(timed(tables.write, key, typed(last)))

        def old_flush(rows: list[dict[str, Any]], n: int) -> None:
            # What MetadataWriter.write did: a table from the dicts, zstd, one file put.
            table = pa.Table.from_pylist(
                [{name: r.get(name) for name in LEGACY_SCHEMA.names} for r in rows],
                schema=LEGACY_SCHEMA,
            )
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            path = root / "old-layout" / f"flush-{n}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)

        out["old layout: one Parquet file of 500"].append(timed(old_flush, first, number))
    versions = {name: int(tables.table(name).version()) for name in (GENERATIONS, RECORDS)}
    return {"times": out, "versions_after": versions}


def measure_tags(settings: Any, repeat: int) -> dict[str, list[float]]:
    import duckdb

    from ideogram_pipeline.history.duckdb_s3 import load_extension
    from ideogram_pipeline.history.tags import change_tags
    from ideogram_pipeline.history.views import plain_sql

    con = duckdb.connect()
    load_extension(con, "delta")
    ids = [
        row[0]
        for row in con.execute(
            f"SELECT id FROM ({plain_sql(settings, GENERATIONS)}) WHERE status = 'stored' "
            f"ORDER BY id LIMIT {2 * repeat + 2}"
        ).fetchall()
    ]
    con.close()
    env = {**os.environ, "IDEOGRAM_STORAGE": settings.storage}
    out: dict[str, list[float]] = {
        "change_tags (1 id, in process)": [],
        "`tag ID --add` process": [],
    }
    out["`tag PREFIX --add` process (12-char prefix)"] = []
    for number in range(repeat):
        start = time.perf_counter()
        change_tags(settings, [ids[number]], add=[f"bench-{number}"])
        out["change_tags (1 id, in process)"].append(time.perf_counter() - start)
        for name, record_id in (
            ("`tag ID --add` process", ids[repeat + number]),
            ("`tag PREFIX --add` process (12-char prefix)", ids[repeat + number][:12]),
        ):
            start = time.perf_counter()
            done = subprocess.run(
                [CLI, "tag", record_id, "--add", f"cli-{number}"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            out[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"tag failed: {done.stderr.strip()[-600:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a local history written by history_gen.py (not changed)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-writes-", dir="/tmp") as tmp:
        root = Path(tmp)
        copy_history(Path(args.root), root)
        settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": str(root)})
        print(f"copy of {args.root}; load average {load_average()} (2 cores)", flush=True)
        flushes = measure_flushes(settings, args.repeat, root)
        print(
            f"flushes ({args.repeat} batches; table versions after: {flushes['versions_after']}):"
        )
        for name, times in flushes["times"].items():
            print(f"  {name:42s} {_median_ms(times)}", flush=True)
        print(f"load average {load_average()}")
        tags = measure_tags(settings, args.repeat)
        print(f"tag updates ({args.repeat} each):")
        for name, times in tags.items():
            print(f"  {name:42s} {_median_ms(times)}", flush=True)
        print(f"load average at end {load_average()}")
    if args.json:
        results = {"flushes": flushes, "tags": tags, "load_end": load_average()}
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The history tables at scale: a day of 100,000 images before and after compaction.

Writes ``--records`` records for one day as the engine writes them (one
``HistoryTables.write`` per ``--flush-every`` records of a batch run, batches of
``--batch-rows`` rows; ``lifecycle.py``'s generator, no image objects), then runs the
lifecycle compaction (Delta's OPTIMIZE, ``ideogram_pipeline.lifecycle.compaction.compact``) and
reports data files, rows per file and files per partition of both tables before and
after, with the history's answer to a count query checked to be unchanged. ``--s3`` does
the same on SeaweedFS.

    .venv/bin/python benchmarks/compaction_scale.py [--records 100000] [--s3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from lifecycle import flushes, write_flushes
from scale_support import load_average

from ideogram_pipeline import history
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, HistoryTables
from ideogram_pipeline.lifecycle.compaction import compact
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store


def layout(tables: HistoryTables, name: str) -> dict[str, Any]:
    """Table ``name``'s data files as its current version reads them."""
    actions = pa.table(tables.table(name).get_add_actions(flatten=True)).to_pylist()
    per_partition = Counter(a["path"].rpartition("/")[0] for a in actions)
    rows = [a["num_records"] for a in actions]
    return {
        "files": len(actions),
        "partitions": len(per_partition),
        "files_per_partition_max": max(per_partition.values()),
        "files_per_partition_mean": round(len(actions) / len(per_partition), 2),
        "rows_per_file_mean": round(sum(rows) / len(rows)),
        "rows_per_file_max": max(rows),
        "mb": round(sum(a["size_bytes"] for a in actions) / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--flush-every", type=int, default=500)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        env = {"IDEOGRAM_STORAGE": str(Path(tmp) / "root")}
        if args.s3:
            from tests.support.seaweed import running_seaweedfs

            server = stack.enter_context(running_seaweedfs(Path(tmp) / "s3"))
            server.create_bucket("layout")
            env = {"IDEOGRAM_STORAGE": "s3://layout/root", **server.env()}
        settings = load_settings(env)
        store = open_store(settings)
        batches = max(1, args.records // args.batch_rows)
        started = time.perf_counter()
        writes = flushes(
            datetime(2025, 6, 1, tzinfo=UTC), 1, batches, args.batch_rows, args.flush_every
        )
        total = write_flushes(settings, store, writes, images=False)
        print(
            f"load average {load_average()}; {total} records of one day in {batches} batches, "
            f"written as engine flushes of <= {args.flush_every} rows "
            f"in {time.perf_counter() - started:.1f} s ({settings.storage})"
        )
        count_sql = "SELECT count(*), round(sum(cost_usd), 6) FROM generations"
        con = history.connect(settings, store)
        before_answer = con.execute(count_sql).fetchone()
        con.close()
        tables = HistoryTables(settings)
        before = {name: layout(tables, name) for name in (GENERATIONS, RECORDS)}
        print(f"before compaction: {before}")
        started = time.perf_counter()
        result = compact(settings)
        seconds = time.perf_counter() - started
        after = {name: layout(tables, name) for name in (GENERATIONS, RECORDS)}
        print(f"after compaction:  {after}  ({seconds:.1f} s, {result.as_dict()})")
        con = history.connect(settings, store)
        after_answer = con.execute(count_sql).fetchone()
        con.close()
        assert after_answer == before_answer, (before_answer, after_answer)
        print(
            f"files {result.files_before} -> {result.files_after} "
            f"({result.files_before / result.files_after:.0f}x fewer); the same answer before "
            f"and after: {after_answer[0]} current records"
        )


if __name__ == "__main__":
    main()

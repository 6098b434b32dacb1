"""Parquet layout at scale: a day of 100,000 images before and after compaction.

Writes ``--records`` records for one day as the engine writes them (one file per
``--flush-every`` records of a run, per date and batch partition; ``history_gen.py``),
then runs the lifecycle compaction (``ideogram_pipeline.compaction.compact``) and reports
files, rows per file and files per partition before and after, with the history's answer
to a count query checked to be unchanged. ``--s3`` does the same on SeaweedFS.

    .venv/bin/python benchmarks/compaction_scale.py [--records 100000] [--s3]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from history_gen import HistoryWriter
from scale_support import load_average

from ideogram_pipeline import history
from ideogram_pipeline.compaction import compact
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX


def layout(store: Any) -> dict[str, Any]:
    infos = [i for i in store.list(GENERATIONS_PREFIX + "/") if i.key.endswith(".parquet")]
    per_partition = Counter(info.key.rpartition("/")[0] for info in infos)
    rows = [pq.read_metadata(io.BytesIO(store.get_bytes(i.key))).num_rows for i in infos]
    return {
        "files": len(infos),
        "partitions": len(per_partition),
        "files_per_partition_max": max(per_partition.values()),
        "files_per_partition_mean": round(len(infos) / len(per_partition), 2),
        "rows_per_file_mean": round(sum(rows) / len(rows)),
        "rows_per_file_max": max(rows),
        "mb": round(sum(i.size for i in infos) / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--flush-every", type=int, default=500)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        root = str(Path(tmp) / "root")
        if args.s3:
            from ideogram_pipeline.storage.seaweed import running_seaweedfs

            server = stack.enter_context(running_seaweedfs(Path(tmp) / "s3"))
            server.create_bucket("layout")
            os.environ.update(server.env())
            root = "s3://layout/root"
        os.environ["IDEOGRAM_CACHE_DIR"] = str(Path(tmp) / "cache")
        settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": root})
        store = open_store(settings)
        writer = HistoryWriter(store, flush_every=args.flush_every)
        batches = sum(1 for _ in writer.generate(args.records, date(2025, 6, 1), 1))
        writer.close()
        print(
            f"load average {load_average()}; {writer.rows} records of one day in {batches} "
            f"batches, written as {writer.files} engine flushes of <= {args.flush_every} rows "
            f"({root})"
        )
        count_sql = "SELECT count(*), round(sum(cost_usd), 6) FROM generations"
        before_answer = history.connect(settings, store).execute(count_sql).fetchone()
        before = layout(store)
        print(f"before compaction: {before}")
        started = time.perf_counter()
        result = compact(store)
        seconds = time.perf_counter() - started
        after = layout(store)
        print(f"after compaction:  {after}  ({seconds:.1f} s, {result.as_dict()})")
        after_answer = history.connect(settings, store).execute(count_sql).fetchone()
        assert after_answer == before_answer, (before_answer, after_answer)
        print(
            f"files {before['files']} -> {after['files']} "
            f"({before['files'] / after['files']:.0f}x fewer); the same answer before and "
            f"after: {after_answer[0]} current records"
        )


if __name__ == "__main__":
    main()

"""What the lifecycle jobs cost on a synthetic history (local folder, or SeaweedFS with --s3).

``--records`` records over ``--days`` days, written by the real ``HistoryTables.write`` (an
append to ``generation_records`` and a MERGE into ``generations``, as one engine flush) in
``--files`` flushes per (day, batch) partition, each stored record with a small image
object. Then, timed: compaction (data files before and after), a report over the whole
span, a dry-run plan and a real cleanup of the older half (objects deleted per second).

    .venv/bin/python benchmarks/lifecycle.py [--records 20000] [--days 10] [--files 10] [--s3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.lifecycle.compaction import TABLES, compact, table_files
from ideogram_pipeline.lifecycle.policy import RetentionPolicy
from ideogram_pipeline.lifecycle.retention import plan_cleanup, run_cleanup
from ideogram_pipeline.reports.usage import build_report
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.storage import ObjectStore, open_store
from ideogram_pipeline.storage.keys import image_key

__all__ = ["PNG", "flushes", "synthetic_records", "write_flushes"]

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 2000


def synthetic_records(
    day: datetime, count: int, run: str, *, first_row: int = 1
) -> list[dict[str, Any]]:
    """``count`` records of one run, shaped as the engine writes them (1 in 20 failed)."""
    rows = []
    for number in range(count):
        record_id = uuid.uuid4().hex
        created = day + timedelta(seconds=number)
        stored = number % 20 != 0
        rows.append(
            {
                "id": record_id,
                "row": first_row + number,
                "image_index": 0,
                "prompt": f"synthetic prompt {first_row + number}",
                "model": "V_3" if number % 3 else "V_2_TURBO",
                "status": "stored" if stored else "failed",
                "error": None if stored else "row 1: generation failed: 503",
                "image_key": image_key(record_id, created.date().isoformat()) if stored else None,
                "size_bytes": len(PNG) if stored else None,
                "created_at": created,
                "date": created.date().isoformat(),
                "cost_usd": 0.06 if stored else 0.0,
                "tags": ["keep"] if number % 97 == 0 else [],
                "run_id": run,
                "run_started_at": day,
                "attempt_id": f"{created.timestamp():020.6f}-{record_id[:8]}",
                "latency_ms": 400.0 + number % 300,
            }
        )
    return rows


def flushes(
    start: datetime, days: int, batches: int, per_batch: int, flush_every: int
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(batch, records) of each engine flush: ``batches`` batches a day, each run once."""
    for day_number in range(days):
        day = start + timedelta(days=day_number)
        for batch_number in range(batches):
            batch = f"d{day_number}-b{batch_number}"
            run = uuid.uuid4().hex[:12]
            for first in range(0, per_batch, flush_every):
                count = min(flush_every, per_batch - first)
                moment = day + timedelta(minutes=batch_number, seconds=first)
                yield batch, synthetic_records(moment, count, run, first_row=first + 1)


def write_flushes(
    settings: Settings,
    store: ObjectStore,
    writes: Iterator[tuple[str, list[dict[str, Any]]]],
    *,
    images: bool = True,
) -> int:
    """Store each flush's images, then write its records as the engine does; returns the
    number of records written."""
    tables = HistoryTables(settings)
    total = 0
    with ThreadPoolExecutor(16) as pool:
        for batch, rows in writes:
            if images:
                keys = [r["image_key"] for r in rows if r["image_key"]]
                list(pool.map(lambda k: store.put_bytes(k, PNG, content_type="image/png"), keys))
            tables.write(batch, [GenerationRecord.from_row({**r, "batch": batch}) for r in rows])
            total += len(rows)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--files", type=int, default=10, help="flushes per partition")
    parser.add_argument("--s3", action="store_true", help="use a SeaweedFS bucket")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {"IDEOGRAM_STORAGE": str(tmp / "root")}
        if args.s3:
            from tests.support.seaweed import running_seaweedfs

            server = stack.enter_context(running_seaweedfs(tmp / "weed"))
            server.create_bucket("bench")
            env = {"IDEOGRAM_STORAGE": "s3://bench/lc", **server.env()}
        settings = load_settings(env)
        store = open_store(settings)
        start = datetime(2025, 1, 1, tzinfo=UTC)
        per_batch = max(args.files, args.records // args.days)
        clock = time.perf_counter()
        total = write_flushes(
            settings,
            store,
            flushes(start, args.days, 1, per_batch, max(1, per_batch // args.files)),
        )
        print(
            f"setup: {total} records in {args.days * args.files} flushes, "
            f"{time.perf_counter() - clock:.1f} s"
        )

        clock = time.perf_counter()
        result = compact(settings, target_bytes=128 * 1024 * 1024)
        print(
            f"compact: {result.files_before} -> {result.files_after} data files in "
            f"{time.perf_counter() - clock:.2f} s ({result.tables})"
        )
        clock = time.perf_counter()
        report = build_report(settings, store, start.date(), (start + timedelta(args.days)).date())
        print(f"report: {report.totals['records']} records in {time.perf_counter() - clock:.2f} s")
        policy = RetentionPolicy(default_days=30)
        as_of = start + timedelta(days=30 + args.days / 2)
        clock = time.perf_counter()
        plan = plan_cleanup(settings, store, policy, as_of)
        print(f"plan (dry run): {plan.count} records in {time.perf_counter() - clock:.2f} s")
        clock = time.perf_counter()
        done = run_cleanup(settings, store, policy, as_of)
        seconds = time.perf_counter() - clock
        tables = HistoryTables(settings)
        files = sum(table_files(tables.table(name))[0] for name in TABLES if tables.exists(name))
        print(
            f"cleanup: {done.plan.count} records, {len(done.plan.objects)} objects, "
            f"{len(done.plan.partitions)} partitions ({done.plan.whole_partitions} emptied) in "
            f"{seconds:.2f} s = {len(done.plan.objects) / seconds:,.0f} objects/s; "
            f"data files now {files}"
        )


if __name__ == "__main__":
    main()

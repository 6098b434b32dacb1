"""What the lifecycle jobs cost on a synthetic history (local folder, or SeaweedFS with --s3).

``--records`` records over ``--days`` days, written by the real ``MetadataWriter`` in
``--files`` small files per (day, batch) partition, each stored record with a small image
object. Then, timed: compaction (files before and after), a report over the whole span, a
dry-run plan and a real cleanup of the older half (objects deleted per second).

    .venv/bin/python benchmarks/lifecycle.py [--records 20000] [--days 10] [--files 10] [--s3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ideogram_pipeline.compaction import compact, count_files
from ideogram_pipeline.keys import image_key
from ideogram_pipeline.lifecycle import RetentionPolicy
from ideogram_pipeline.reports import build_report
from ideogram_pipeline.retention import plan_cleanup, run_cleanup
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store
from ideogram_pipeline.storage.metadata import MetadataWriter

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 2000


def _records(day: datetime, count: int, batch: str, run: str) -> list[dict]:
    rows = []
    for number in range(count):
        record_id = uuid.uuid4().hex
        created = day + timedelta(seconds=number)
        status = "stored" if number % 20 else "failed"
        rows.append(
            {
                "id": record_id,
                "row": number + 1,
                "image_index": 0,
                "prompt": f"synthetic prompt {number}",
                "model": "V_3" if number % 3 else "V_2_TURBO",
                "status": status,
                "error": None if status == "stored" else "row 1: generation failed: 503",
                "image_key": image_key(record_id, created.date().isoformat())
                if status == "stored"
                else None,
                "size_bytes": len(PNG) if status == "stored" else None,
                "created_at": created,
                "date": created.date().isoformat(),
                "cost_usd": 0.06 if status == "stored" else 0.0,
                "tags": ["keep"] if number % 97 == 0 else [],
                "run_id": run,
                "run_started_at": day,
                "latency_ms": 400.0 + number % 300,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--files", type=int, default=10, help="files per partition")
    parser.add_argument("--s3", action="store_true", help="use a SeaweedFS bucket")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {"IDEOGRAM_STORAGE": str(tmp / "root")}
        if args.s3:
            from ideogram_pipeline.storage.seaweed import running_seaweedfs

            server = stack.enter_context(running_seaweedfs(tmp / "weed"))
            server.create_bucket("bench")
            env = {"IDEOGRAM_STORAGE": "s3://bench/lc", **server.env()}
        settings = load_settings(env)
        store = open_store(settings)
        start = datetime(2025, 1, 1, tzinfo=UTC)
        per_file = max(1, args.records // (args.days * args.files))
        writes = []
        for day_number in range(args.days):
            day = start + timedelta(days=day_number)
            for file_number in range(args.files):
                run = f"r{day_number}-{file_number}"
                writes.append(_records(day + timedelta(minutes=file_number), per_file, "b", run))
        clock = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            for rows in writes:
                keys = [r["image_key"] for r in rows if r["image_key"]]
                list(pool.map(lambda k: store.put_bytes(k, PNG, content_type="image/png"), keys))
                MetadataWriter(store, rows[0]["run_id"]).write("b", rows)
        total = sum(len(rows) for rows in writes)
        print(f"setup: {total} records in {len(writes)} files, {time.perf_counter() - clock:.1f} s")

        clock = time.perf_counter()
        result = compact(store, target_bytes=128 * 1024 * 1024)
        print(
            f"compact: {result.files_before} -> {result.files_after} files in "
            f"{time.perf_counter() - clock:.2f} s"
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
        print(
            f"cleanup: {done.plan.count} records, {len(done.plan.objects)} objects, "
            f"{len(done.plan.partitions)} partitions ({done.plan.whole_partitions} whole) in "
            f"{seconds:.2f} s = {len(done.plan.objects) / seconds:,.0f} objects/s; "
            f"metadata files now {count_files(store)[0]}"
        )


if __name__ == "__main__":
    main()

"""What the history features cost: per-image stamping, and queries on a large history.

- ``stamp``: :func:`ideogram_pipeline.images.png_metadata.prepare_for_storage` (text chunks + pHash)
  on full-size 1024x1024 simulator PNGs (~1.4 MB), the work added to every stored image;
- ``view``: ``count(*)`` on one batch and a prompt-word search over ``--records`` synthetic
  records, before and after ``--tag-changes`` records are tagged (tags are UPDATEs of
  ``generations`` now, so reads should not notice them; each tag call is timed too);
- ``dedupe``: the exact-duplicate lookup a batch of ``--requests`` seeded rows makes;
- ``near``: :func:`near_duplicate_groups` over every record's pHash.

    .venv/bin/python benchmarks/history.py [--records 200000] [--tag-changes 5000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ideogram_pipeline import history
from ideogram_pipeline.history.duplicates import existing_images, near_duplicate_groups
from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.search import SearchFilters, search
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.history.tags import change_tags
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.images.png_metadata import prepare_for_storage
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.images import ImageKey, pixel_size, render_png
from ideogram_pipeline.storage import LocalStore

WORDS = ("fox", "owl", "kettle", "harbour", "lantern", "orchard", "storm", "meadow", "tin")


def _timed(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def stamp(images: int) -> None:
    pngs = [
        render_png(ImageKey("V_3", f"prompt {i}", i, "1024x1024"), *pixel_size("1024x1024"))
        for i in range(images)
    ]
    prepare_for_storage(pngs[0], {"id": "warm"}, "b")  # imports, Pillow plugins
    times = []
    for number, png in enumerate(pngs):
        record = {"id": uuid.uuid4().hex, "prompt": f"prompt {number}", "seed": number}
        start = time.perf_counter()
        prepare_for_storage(png, record, "bench")
        times.append(time.perf_counter() - start)
    print(
        f"stamp: {statistics.median(times) * 1000:.1f} ms median per 1024x1024 image "
        f"({len(pngs[0]) / 1e6:.1f} MB), max {max(times) * 1000:.1f} ms"
    )


def build_history(store: LocalStore, records: int, batches: int) -> list[dict]:
    rng = random.Random(7)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = []
    for number in range(records):
        batch = f"b{number % batches}"
        words = " ".join(rng.choice(WORDS) for _ in range(6))
        request = GenerationRequest(row=number, prompt=words, seed=number)
        rows.append(
            {
                "id": uuid.uuid4().hex,
                "row": number,
                "image_index": 0,
                "prompt": words,
                "status": "stored",
                "seed": number,
                "tags": ["bench"],
                "image_key": f"images/x/{number}.png",
                "request_hash": request.request_hash(),
                "phash": f"{rng.getrandbits(64):016x}",
                "created_at": start + timedelta(seconds=number),
                "run_started_at": start,
                "attempt_id": "a",
                "date": "2024-01-01",
                "_batch": batch,
            }
        )
    tables = HistoryTables.for_store(store)
    by_batch: dict[str, list[dict]] = {}
    for row in rows:
        by_batch.setdefault(row.pop("_batch"), []).append(row)
    for batch, batch_rows in by_batch.items():
        tables.write(batch, [GenerationRecord.from_row({**r, "batch": batch}) for r in batch_rows])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--tag-changes", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()

    stamp(args.images)
    with tempfile.TemporaryDirectory() as root:
        settings = load_settings({"IDEOGRAM_STORAGE": root})
        store = LocalStore(root)
        rows = build_history(store, args.records, args.batches)
        filters = SearchFilters(text='"fox owl"', limit=50)

        def measure(label: str) -> None:
            con = history.connect(settings, store)
            one_batch = "SELECT count(*) FROM generations WHERE batch = 'b3'"
            batch_ms = _timed(lambda: con.execute(one_batch).fetchall())
            search_ms = _timed(lambda: search(con, filters))
            con.close()
            print(
                f"view ({label}): {args.records} records, count one batch {batch_ms:.0f} ms, "
                f"phrase search {search_ms:.0f} ms (median of 5)"
            )

        measure("before tagging")
        ids = [row["id"] for row in rows]
        start = time.perf_counter()
        for first in range(0, args.tag_changes, 500):
            change_tags(settings, ids[first : first + 500], add=["keep"])
        calls = max(1, args.tag_changes // 500)
        print(
            f"tag: {args.tag_changes} records in {calls} calls of 500: "
            f"{(time.perf_counter() - start) / calls * 1000:.0f} ms per call"
        )
        measure(f"after {args.tag_changes} tag changes")

        sample = random.Random(1).sample(rows, args.requests)
        requests = [GenerationRequest(row=1, prompt=r["prompt"], seed=r["seed"]) for r in sample]
        start = time.perf_counter()
        existing_images(settings, store, requests)
        print(
            f"dedupe: lookup of {args.requests} seeded requests over {args.records} records "
            f"{(time.perf_counter() - start) * 1000:.0f} ms (incl. HEADs of matches)"
        )
        con = history.connect(settings, store)
        start = time.perf_counter()
        groups = near_duplicate_groups(con, 4)
        print(
            f"near: grouping {args.records} pHashes at distance 4: "
            f"{(time.perf_counter() - start) * 1000:.0f} ms, {len(groups)} groups"
        )
        con.close()


if __name__ == "__main__":
    main()

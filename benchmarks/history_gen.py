"""A realistic synthetic history in the real layout, for the history benchmarks.

Writes ``--records`` metadata rows (default 1,000,000) as the engine would have written
them over ``--days`` days: ``METADATA_SCHEMA`` Parquet (zstd), Hive partitions
``metadata/generations/date=YYYY-MM-DD/batch=KEY/<run>-<n>.parquet``, one file per
``--flush-every`` records of a run (the engine's flush), through the same object store as
the product (a local folder, or an S3 root with ``--s3 s3://bucket/prefix``).

What makes it realistic:

- prompts from ``tests/data/krea-prompts-sample.csv`` (real Stable Diffusion prompts) with
  style modifiers, a Magic-Prompt expansion on about half of them;
- batches of 50 to 4,000 CSV rows, each run on one day, a few rows with 2-4 images;
- a status mix close to a real account's: mostly ``stored``, some ``unsafe``, ``rejected``,
  ``failed`` and a few ``unknown``; most failed and unknown rows are re-run a day or two
  later as a new attempt (a later ``attempt_id``, often in another date partition), which
  is what the ``generations`` view has to resolve;
- ids, attempt ids, image keys, hashes, URLs and costs shaped as the engine makes them.

    .venv/bin/python benchmarks/history_gen.py ROOT [--records 1000000] [--days 365]
    .venv/bin/python benchmarks/history_gen.py s3://bucket/prefix   (AWS_* from the env)

Also writes ``ROOT``-independent ``--json-out`` (one JSON list of every record) when asked,
for the naive-approach comparison in ``history_queries.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_support import load_average, sample_prompts

from ideogram_pipeline.keys import image_key
from ideogram_pipeline.pricing import price_per_image
from ideogram_pipeline.storage.metadata import METADATA_SCHEMA, partition_prefix

MODELS = (("V_3", 0.72), ("V_2A_TURBO", 0.1), ("V_2", 0.08), ("ideogram-4", 0.06), ("V_1", 0.04))
SPEEDS = ("TURBO", "DEFAULT", "QUALITY")
STATUSES = (("stored", 0.935), ("unsafe", 0.02), ("rejected", 0.015), ("failed", 0.027))
ASPECTS = ("1x1", "16x9", "9x16", "4x3", "3x2")
STYLES = ("AUTO", "GENERAL", "REALISTIC", "DESIGN", None)
MODIFIERS = (
    "cinematic lighting",
    "highly detailed",
    "35mm photo",
    "watercolor",
    "octane render",
    "studio photo",
    "oil on canvas",
    "soft focus",
    "golden hour",
    "isometric",
    "8k",
)
EXPANSION = (
    "The scene is rendered with careful attention to texture and light, soft shadows "
    "falling across the subject, a shallow depth of field isolating it from a muted "
    "background, and a colour palette of warm ochres and cool blues."
)
TAGS = ((), (), (), ("draft",), ("keep",), ("client-a",), ("client-a", "keep"))


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    value = rng.random()
    for name, weight in weighted:
        value -= weight
        if value < 0:
            return name
    return weighted[-1][0]


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


class HistoryWriter:
    """Builds records batch by batch and writes them as the engine's flushes would."""

    def __init__(self, store: Any, *, flush_every: int, seed: int = 7) -> None:
        self.store = store
        self.flush_every = flush_every
        self.rng = random.Random(seed)
        self.prompts = sample_prompts()
        self.files = 0
        self.rows = 0
        self.pool = ThreadPoolExecutor(8)
        self.pending: list[Any] = []

    def _record(
        self,
        batch: str,
        row: int,
        index: int,
        when: datetime,
        attempt: str,
        run: str,
        base: dict[str, Any],
        status: str,
    ) -> dict[str, Any]:
        rng = self.rng
        identity = f"{batch}|{row}|{attempt}|{index}"
        record_id = hashlib.sha256(identity.encode()).hexdigest()[:32]
        day = when.date().isoformat()
        record = dict(base)
        record.update(
            id=record_id,
            row=row,
            image_index=index,
            status=status,
            created_at=when,
            run_id=run,
            attempt_id=attempt,
            date=day,
            attempts=1,
            latency_ms=rng.uniform(4000, 14000),
        )
        if status in ("stored", "unsafe"):
            record["seed"] = base["requested_seed"] or rng.randrange(2**31)
            record["cost_usd"] = price_per_image(base["model"], base["rendering_speed"])
            record["original_url"] = (
                f"https://ideogram.ai/api/images/ephemeral/{_hex(rng, 24)}.png"
                f"?exp={int(when.timestamp()) + 86400}&signature={_hex(rng, 64)}"
            )
            record["is_safe"] = status == "stored"
            if base["model"] in ("V_3", "ideogram-4"):
                record["generation_id"] = _hex(rng, 32)
        if status == "stored":
            key = image_key(record_id, day)
            record.update(
                image_key=key,
                stored_uri=self.store.uri(key),
                sha256=_hex(rng, 64),
                download_sha256=_hex(rng, 64),
                phash=_hex(rng, 16),
                size_bytes=rng.randrange(1_000_000, 2_000_000),
            )
        elif status == "unsafe":
            record["error"] = "Ideogram withheld the image as unsafe (billed)"
        elif status == "rejected":
            record["error"] = f"row {row}: aspect_ratio: '7:3' is not one of 1x1, 16x9, ..."
        elif status == "failed":
            record.update(
                error=f"row {row}: generation failed after 6 attempt(s): HTTP 503",
                failure_kind="generation",
                attempts=6,
                last_error="ServerError: HTTP 503",
            )
        else:  # unknown
            record.update(
                error=f"row {row}: the request was sent but no answer arrived",
                failure_kind="answer_lost",
            )
        return record

    def _base(self, batch: str, row: int, when: datetime, run: str) -> dict[str, Any]:
        rng = self.rng
        prompt = self.prompts[rng.randrange(len(self.prompts))]
        if rng.random() < 0.6:
            prompt = f"{prompt}, {rng.choice(MODIFIERS)}"
        model = _pick(rng, MODELS)
        speed = rng.choice(SPEEDS) if model == "V_3" else None
        seed = rng.randrange(2**31) if rng.random() < 0.4 else None
        magic = rng.choice(("ON", "AUTO", "OFF"))
        return {
            "prompt": prompt,
            "expanded_prompt": f"{prompt}. {EXPANSION}" if magic != "OFF" else prompt,
            "negative_prompt": "blurry, watermark" if rng.random() < 0.2 else None,
            "model": model,
            "style_type": rng.choice(STYLES),
            "aspect_ratio": rng.choice(ASPECTS),
            "resolution": None,
            "rendering_speed": speed,
            "magic_prompt": magic,
            "requested_seed": seed,
            "seed": seed,
            "num_images": 1,
            "tags": list(rng.choice(TAGS)),
            "run_started_at": when,
            "request_hash": _hex(rng, 64),
            "batch_name": f"{batch}.csv",
            "source_file": f"prompts/{batch}.csv",
            "simulated": False,
            "cost_usd": 0.0,
        }

    def _flush(self, batch: str, day: str, run: str, records: list[dict[str, Any]]) -> None:
        columns = {name: [record.get(name) for record in records] for name in METADATA_SCHEMA.names}
        table = pa.Table.from_pydict(columns, schema=METADATA_SCHEMA)
        key = f"{partition_prefix(day, batch)}/{run}-{uuid.uuid4().hex[:8]}.parquet"

        def write() -> None:
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            self.store.put_bytes(
                key, buffer.getvalue(), content_type="application/vnd.apache.parquet"
            )

        self.pending.append(self.pool.submit(write))
        self.files += 1
        self.rows += len(records)
        if len(self.pending) > 32:
            self.pending.pop(0).result()

    def _run(self, batch: str, when: datetime, rows: list[tuple[int, dict | None]]) -> list:
        """One run over ``rows``: returns the rows to re-run (failed or unknown)."""
        run = uuid.uuid4().hex[:12]
        retry = []
        buffer: list[dict[str, Any]] = []
        for number, (row, base) in enumerate(rows):
            created = when + timedelta(milliseconds=number * 600)
            attempt = f"{int(created.timestamp() * 1e9):020d}-{_hex(self.rng, 8)}"
            status = _pick(self.rng, STATUSES)
            if base is None:
                base = self._base(batch, row, created, run)
                if self.rng.random() < 0.001:
                    status = "unknown"  # the answer was lost in a crash
            elif self.rng.random() < 0.9:
                status = "stored"  # a re-run mostly succeeds
            images = 4 if status == "stored" and self.rng.random() < 0.03 else 1
            base["num_images"] = images
            for index in range(images):
                buffer.append(self._record(batch, row, index, created, attempt, run, base, status))
            if status in ("failed", "unknown"):
                retry.append((row, base))
            if len(buffer) >= self.flush_every:
                self._flush_by_day(batch, run, buffer)
                buffer = []
        if buffer:
            self._flush_by_day(batch, run, buffer)
        return retry

    def _flush_by_day(self, batch: str, run: str, records: list[dict[str, Any]]) -> None:
        by_day: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_day.setdefault(record["date"], []).append(record)
        for day, day_records in by_day.items():
            self._flush(batch, day, run, day_records)

    def generate(self, records: int, start: date, days: int) -> Iterator[str]:
        """Write batches until ``records`` rows exist; yields each batch key."""
        number = 0
        while self.rows < records:
            number += 1
            batch = f"batch-{number:05d}"
            size = min(int(self.rng.lognormvariate(6.6, 0.9)) + 50, 4000, records - self.rows)
            day = start + timedelta(days=int(self.rng.random() * days))
            when = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
                seconds=self.rng.randrange(0, 20 * 3600)
            )
            retry = self._run(batch, when, [(row, None) for row in range(1, size + 1)])
            if retry and self.rng.random() < 0.7:
                later = when + timedelta(days=self.rng.choice((0, 1, 2)), hours=2)
                self._run(batch, later, retry)
            yield batch

    def close(self) -> None:
        for future in self.pending:
            future.result()
        self.pool.shutdown()


def write_history(
    store: Any, records: int, *, days: int = 365, flush_every: int = 500, seed: int = 7
) -> dict[str, Any]:
    """Write the synthetic history into ``store``; returns counts and seconds."""
    started = time.perf_counter()
    writer = HistoryWriter(store, flush_every=flush_every, seed=seed)
    batches = sum(1 for _ in writer.generate(records, date(2024, 1, 1), days))
    writer.close()
    return {
        "rows": writer.rows,
        "files": writer.files,
        "batches": batches,
        "seconds": round(time.perf_counter() - started, 1),
    }


def write_json(store: Any, path: Path) -> int:
    """The naive alternative: every record of the history in one JSON file."""
    import duckdb

    glob = store.uri("metadata/generations/**/*.parquet").replace("'", "''")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(
        f"COPY (SELECT * FROM read_parquet('{glob}', hive_partitioning = true)) "
        f"TO '{str(path).replace(chr(39), chr(39) * 2)}' (FORMAT json, ARRAY true)"
    )
    con.close()
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="storage root: a folder or s3://bucket/prefix")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--flush-every", type=int, default=500)
    parser.add_argument("--json-out", help="also write every record to this JSON file")
    args = parser.parse_args()

    import os

    from ideogram_pipeline.settings import load_settings
    from ideogram_pipeline.storage import open_store

    settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": args.root})
    store = open_store(settings)
    print(f"load average {load_average()}; writing {args.records} records to {args.root}")
    result = write_history(store, args.records, days=args.days, flush_every=args.flush_every)
    print(json.dumps(result))
    if args.json_out:
        size = write_json(store, Path(args.json_out))
        print(f"naive JSON: {size / 1e6:.0f} MB at {args.json_out}")


if __name__ == "__main__":
    main()

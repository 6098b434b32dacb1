"""A realistic synthetic history, for the history benchmarks: Delta tables, or the old layout.

Writes a history of ``--records`` records (default 1,000,000) as the engine would have
produced it over ``--days`` days, in one of two layouts:

- **tables** (default): the Delta tables ``history/generations`` (current state, one row
  per batch row and image index) and ``history/generation_records`` (every record ever
  written, plus the audit records of tag and pin changes), written with ``deltalake`` in
  large chunks, Hive-partitioned by ``date`` then ``batch``, then compacted
  (``optimize.compact``), vacuumed and checkpointed: what a production history looks like
  after the lifecycle's compaction. ``--records`` counts ``generations`` rows.
- **legacy** (``--legacy``): what releases before the tables wrote, for the ``migrate``
  benchmark: append-only Parquet (zstd) under
  ``metadata/generations/date=YYYY-MM-DD/batch=KEY/<run>-<n>.parquet``, one file per
  ``--flush-every`` records of a run (the old engine's flush). ``--records`` counts files'
  rows there.

What makes it realistic (the same distributions in both layouts):

- prompts from ``tests/data/krea-prompts-sample.csv`` (real Stable Diffusion prompts) with
  style modifiers, a Magic-Prompt expansion on about two thirds of them;
- batches of 50 to 4,000 CSV rows (``--batch-size-mu`` sets the log-normal's centre; the
  default gives about 3,000 date/batch partitions at a million records), each run on one
  day, a few rows with 4 images;
- a status mix close to a real account's: mostly ``stored``, some ``unsafe``, ``rejected``,
  ``failed`` and a few ``unknown``; most failed and unknown rows are re-run a day or two
  later as a new attempt (often in another date partition), so ``generation_records``
  holds superseded records ``generations`` does not;
- tags changed after the fact on 3% of stored images and 0.5% pinned (tables only: each
  change is an UPDATE of ``generations`` plus an audit record);
- ids, attempt ids, image keys, hashes, URLs and costs shaped as the engine makes them.

    .venv/bin/python benchmarks/history_gen.py /tmp/bench-h1m [--records 1000000]
    .venv/bin/python benchmarks/history_gen.py /tmp/bench-legacy --legacy
    .venv/bin/python benchmarks/history_gen.py s3://bucket/prefix   (AWS_* from the env)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_support import load_average, sample_prompts

from ideogram_pipeline.history.schema import METADATA_SCHEMA, PARTITION_COLUMNS, TABLE_SCHEMA
from ideogram_pipeline.ideogram.prices import price_per_image
from ideogram_pipeline.storage.keys import image_key

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
LATER_TAGS = (("keep",), ("client-a", "keep"), ("portfolio",), ("reject",))
#: The old layout's columns: the record without the tables' bookkeeping columns.
LEGACY_SCHEMA = pa.schema(
    [f for f in METADATA_SCHEMA if f.name not in ("pinned", "event", "recorded_at")]
)
LEGACY_PREFIX = "metadata/generations"
#: Records converted and committed at once (one Delta commit per table per chunk).
CHUNK_RECORDS = 200_000


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    value = rng.random()
    for name, weight in weighted:
        value -= weight
        if value < 0:
            return name
    return weighted[-1][0]


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


@dataclass
class Batch:
    """One batch's runs, each a list of records in the order the engine wrote them."""

    key: str
    runs: list[list[dict[str, Any]]] = field(default_factory=list)


class HistoryMaker:
    """Builds the records of a synthetic history batch by batch (no storage involved)."""

    def __init__(self, uri: Any, *, seed: int = 7, batch_mu: float = 5.7) -> None:
        self.uri = uri  # key -> stored_uri, as the store makes it
        self.rng = random.Random(seed)
        self.prompts = sample_prompts()
        self.batch_mu = batch_mu

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
                stored_uri=self.uri(key),
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

    def _base(self, batch: str, when: datetime) -> dict[str, Any]:
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

    def _run(
        self, batch: str, when: datetime, rows: list[tuple[int, dict | None]]
    ) -> tuple[list[dict[str, Any]], list[tuple[int, dict]]]:
        """One run over ``rows``: its records, and the rows to re-run (failed or unknown)."""
        run = uuid.UUID(int=self.rng.getrandbits(128)).hex[:12]
        retry = []
        records: list[dict[str, Any]] = []
        for number, (row, base) in enumerate(rows):
            created = when + timedelta(milliseconds=number * 600)
            attempt = f"{int(created.timestamp() * 1e9):020d}-{_hex(self.rng, 8)}"
            status = _pick(self.rng, STATUSES)
            if base is None:
                base = self._base(batch, created)
                if self.rng.random() < 0.001:
                    status = "unknown"  # the answer was lost in a crash
            elif self.rng.random() < 0.9:
                status = "stored"  # a re-run mostly succeeds
            images = 4 if status == "stored" and self.rng.random() < 0.03 else 1
            base["num_images"] = images
            for index in range(images):
                records.append(self._record(batch, row, index, created, attempt, run, base, status))
            if status in ("failed", "unknown"):
                retry.append((row, base))
        return records, retry

    def batches(self, start: date, days: int) -> Iterator[Batch]:
        """Batches without end, each with its first run and (70% of the time) a re-run."""
        number = 0
        while True:
            number += 1
            key = f"batch-{number:05d}"
            size = min(int(self.rng.lognormvariate(self.batch_mu, 0.9)) + 50, 4000)
            day = start + timedelta(days=int(self.rng.random() * days))
            when = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
                seconds=self.rng.randrange(0, 20 * 3600)
            )
            batch = Batch(key)
            records, retry = self._run(key, when, [(row, None) for row in range(1, size + 1)])
            batch.runs.append(records)
            if retry and self.rng.random() < 0.7:
                later = when + timedelta(days=self.rng.choice((0, 1, 2)), hours=2)
                batch.runs.append(self._run(key, later, retry)[0])
            yield batch

    def changes(self, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tag and pin changes made after the fact: applied to ``current`` in place, and
        returned as the audit records the tables append for them."""
        rng = self.rng
        audit = []
        for record in current:
            if record["status"] != "stored":
                continue
            roll = rng.random()
            if roll < 0.03:
                record["tags"] = list(rng.choice(LATER_TAGS))
                event = "tag"
            elif roll < 0.035:
                record["pinned"] = True
                event = "pin"
            else:
                continue
            record["recorded_at"] = record["created_at"] + timedelta(days=rng.randrange(1, 60))
            audit.append({**record, "event": event})
        return audit


# -- the Delta tables -----------------------------------------------------------------------


def _as_table_rows(batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every record, the current row per row key) of one batch, in the tables' columns."""
    records = []
    current: dict[tuple[int, int], dict[str, Any]] = {}
    for run in batch.runs:
        for record in run:
            row = {
                **record,
                "batch": batch.key,
                "date": date.fromisoformat(record["date"]),
                "event": "generate",
                "recorded_at": record["created_at"],
                "pinned": False,
            }
            records.append(row)
            current[(row["row"], row["image_index"])] = dict(row)
    return records, list(current.values())


def write_tables(settings: Any, records: int, *, days: int, seed: int, batch_mu: float) -> dict:
    """The Delta tables of a ``records``-row history under ``settings.storage``."""
    from deltalake import write_deltalake

    from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, HistoryTables
    from ideogram_pipeline.storage import open_store

    started = time.perf_counter()
    store = open_store(settings)
    tables = HistoryTables(settings)
    for name in (GENERATIONS, RECORDS):
        if tables.exists(name):
            raise SystemExit(f"{tables.uri(name)} already exists: give an empty root")
        tables.table(name)  # created as the product creates it (properties, partitioning)
    maker = HistoryMaker(store.uri, seed=seed, batch_mu=batch_mu)
    counts = {"generations": 0, "generation_records": 0, "batches": 0, "commits": 0}
    partitions: set[tuple[str, str]] = set()
    pending: dict[str, list[dict[str, Any]]] = {GENERATIONS: [], RECORDS: []}

    def flush() -> None:
        for name, rows in pending.items():
            if rows:
                table = pa.Table.from_pylist(rows, schema=TABLE_SCHEMA)
                write_deltalake(
                    tables.uri(name),
                    table,
                    mode="append",
                    partition_by=list(PARTITION_COLUMNS),
                    storage_options=tables.options,
                )
                counts["commits"] += 1
                rows.clear()

    batches = maker.batches(date(2024, 1, 1), days)
    while counts["generations"] < records:
        batch = next(batches)
        audit, current = _as_table_rows(batch)
        audit += maker.changes(current)  # the last batch may overshoot ``records`` a little
        counts["generations"] += len(current)
        counts["generation_records"] += len(audit)
        counts["batches"] += 1
        partitions.update((r["date"].isoformat(), r["batch"]) for r in current)
        pending[GENERATIONS] += current
        pending[RECORDS] += audit
        if len(pending[RECORDS]) >= CHUNK_RECORDS:
            flush()
    flush()
    written = time.perf_counter() - started
    for name in (GENERATIONS, RECORDS):
        tables.compact(name)
        tables.vacuum(name)
        tables.table(name).create_checkpoint()
    counts.update(
        partitions_current=len(partitions),
        seconds_written=round(written, 1),
        seconds=round(time.perf_counter() - started, 1),
    )
    counts.update(files_and_bytes(tables))
    return counts


def files_and_bytes(tables: Any) -> dict[str, Any]:
    """Data files and bytes of each table's newest version."""
    from ideogram_pipeline.history.tables import GENERATIONS, RECORDS

    out = {}
    for name in (GENERATIONS, RECORDS):
        table = tables.table(name)
        actions = table.get_add_actions(flatten=True)
        sizes = actions.column("size_bytes").to_pylist()
        out[name + "_files"] = len(sizes)
        out[name + "_mb"] = round(sum(sizes) / 1e6, 1)
        out[name + "_version"] = int(table.version())
    return out


# -- the old layout -------------------------------------------------------------------------


class LegacyWriter:
    """Writes a batch's runs as the old engine's flushes: one Parquet file per
    ``flush_every`` records of a run and day, through the store (a folder or S3)."""

    def __init__(self, store: Any, *, flush_every: int) -> None:
        self.store = store
        self.flush_every = flush_every
        self.files = 0
        self.rows = 0
        self.pool = ThreadPoolExecutor(8)
        self.pending: list[Any] = []

    def write(self, batch: Batch, limit: int) -> None:
        for run in batch.runs:
            run = run[: max(0, limit - self.rows)]
            for start in range(0, len(run), self.flush_every):
                by_day: dict[str, list[dict[str, Any]]] = {}
                for record in run[start : start + self.flush_every]:
                    by_day.setdefault(record["date"], []).append(record)
                for day, rows in by_day.items():
                    self._file(batch.key, day, rows[0]["run_id"], rows)

    def _file(self, batch: str, day: str, run: str, records: list[dict[str, Any]]) -> None:
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(
            [{name: r.get(name) for name in LEGACY_SCHEMA.names} for r in records],
            schema=LEGACY_SCHEMA,
        )
        key = f"{LEGACY_PREFIX}/date={day}/batch={batch}/{run}-{uuid.uuid4().hex[:8]}.parquet"

        def put() -> None:
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            self.store.put_bytes(
                key, buffer.getvalue(), content_type="application/vnd.apache.parquet"
            )

        self.pending.append(self.pool.submit(put))
        self.files += 1
        self.rows += len(records)
        if len(self.pending) > 32:
            self.pending.pop(0).result()

    def close(self) -> None:
        for future in self.pending:
            future.result()
        self.pool.shutdown()


def write_legacy(
    store: Any, records: int, *, days: int, flush_every: int, seed: int, batch_mu: float
) -> dict[str, Any]:
    """The old layout's files of a ``records``-row history in ``store``."""
    started = time.perf_counter()
    writer = LegacyWriter(store, flush_every=flush_every)
    maker = HistoryMaker(store.uri, seed=seed, batch_mu=batch_mu)
    batches = 0
    for batch in maker.batches(date(2024, 1, 1), days):
        writer.write(batch, records)
        batches += 1
        if writer.rows >= records:
            break
    writer.close()
    return {
        "rows": writer.rows,
        "files": writer.files,
        "batches": batches,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="storage root: a folder or s3://bucket/prefix")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--batch-size-mu", type=float, default=5.7, help="log-normal centre of batch sizes"
    )
    parser.add_argument("--legacy", action="store_true", help="the old layout, for migrate")
    parser.add_argument("--flush-every", type=int, default=500, help="old layout: rows per file")
    args = parser.parse_args()

    from ideogram_pipeline.settings import load_settings
    from ideogram_pipeline.storage import open_store

    settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": args.root})
    layout = "old layout" if args.legacy else "Delta tables"
    print(f"load average {load_average()}; {args.records} records ({layout}) to {args.root}")
    if args.legacy:
        result = write_legacy(
            open_store(settings),
            args.records,
            days=args.days,
            flush_every=args.flush_every,
            seed=args.seed,
            batch_mu=args.batch_size_mu,
        )
    else:
        result = write_tables(
            settings, args.records, days=args.days, seed=args.seed, batch_mu=args.batch_size_mu
        )
    result["load_end"] = load_average()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""What keeps the pipeline flat at scale (issue 7), checked on small real runs.

Nothing is faked: the engine runs against the bundled simulator, storage is a real folder
or SeaweedFS, the history views run in DuckDB, the sensor against a real Dagster instance.
No assertion is about time; the benchmarks in ``benchmarks/`` measure that.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.definitions import defs
from ideogram_pipeline.defs.batches.sensors import prompts_sensor
from ideogram_pipeline.defs.resources import build_resources
from ideogram_pipeline.history.sandbox import sandboxed_connection, views_for
from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.search import SearchFilters, search
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.polling import LatencyTracker, next_interval
from ideogram_pipeline.runs.engine import _worker_count, run_batch
from ideogram_pipeline.runs.ledger import LEDGER_PREFIX
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore, open_store


def _csv(rows: int) -> bytes:
    lines = ["prompt,seed"] + [f'"A lantern in a window, study {n}",{n}' for n in range(rows)]
    return ("\n".join(lines) + "\n").encode()


# -- polling ---------------------------------------------------------------------------


def test_first_poll_settles_on_the_latency() -> None:
    """Fed a fixed 1.0 s latency, the first poll converges there, from either side."""
    for start in (0.2, 3.0):
        tracker = LatencyTracker(start)
        for _ in range(600):
            caught = tracker.estimate_s >= 1.0
            tracker.observe(tracker.estimate_s if caught else 1.0 + 0.01, caught)
        assert 0.97 < tracker.estimate_s < 1.05


def test_a_late_first_poll_never_teaches_a_longer_latency() -> None:
    """A generation already complete at its first poll only bounds the latency from above:
    polls a busy loop sent late (0.75 s for 0.5 s generations) leave the estimate where it
    was, while one still pending at its first poll and seen at 10 s still teaches 10 s."""
    tracker = LatencyTracker(0.5)
    for _ in range(3):  # the warm-up, every first poll late
        tracker.observe(0.75, caught_by_first_poll=True)
    assert tracker.estimate_s == pytest.approx(0.5)
    tracker.observe(1.4, caught_by_first_poll=True)  # a stall after the warm-up
    assert tracker.estimate_s < 0.5
    tracker.observe(10.0, caught_by_first_poll=False)  # a slower API: still learnt at once
    assert tracker.estimate_s == pytest.approx(9.0)


def test_later_polls_back_off_to_a_tenth_of_the_latency() -> None:
    gaps = [next_interval(n, 10.0) for n in range(1, 30)]
    assert gaps == sorted(gaps) and gaps[0] == pytest.approx(0.01) and gaps[-1] == 1.0
    assert next_interval(50, 0.05) == pytest.approx(0.01)  # never below the minimum gap


@pytest.mark.slow
def test_polling_stays_within_the_organisations_budget() -> None:
    """A client limited to 5 polls/s (burst 5) never meets the API's 60-per-10 s limit."""
    config = SimulatorConfig(latency_s=0.2, image_scale=0.25, poll_limit_per_10s=60)
    requests = [GenerationRequest(row=n, prompt=f"A kite, study {n}", seed=n) for n in range(16)]
    with running_simulator(config) as sim:

        async def go() -> IdeogramClient:
            async with IdeogramClient(
                sim.base_url, sim.api_key, max_inflight=8, poll_rate_per_s=5.0
            ) as client:
                client.poll_budget.burst = client.poll_budget._tokens = 5.0

                await asyncio.gather(
                    *(client.generate_async(r, lambda _id: None) for r in requests)
                )
                return client

        client = asyncio.run(go())
        assert sim.stats.rate_limited == 0
    assert client.poll_budget.polls >= len(requests)
    assert client.poll_budget.peak_10s <= 55


# -- the engine --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_long_batch_keeps_tasks_and_ledger_bounded(tmp_path: Path) -> None:
    """Tasks stay at the worker count, and the ledger is pruned after every flush."""
    rows, limit, flush_every = 48, 3, 4
    store = LocalStore(tmp_path / "root")
    seen = {"tasks": 0, "ledger": 0}

    def progress(_progress: object) -> None:
        seen["tasks"] = max(seen["tasks"], len(asyncio.all_tasks()))
        entries = sum(1 for _ in store.list(f"{LEDGER_PREFIX}/"))
        seen["ledger"] = max(seen["ledger"], entries)

    config = SimulatorConfig(latency_s=0.0, image_scale=0.25, max_inflight=limit)
    with running_simulator(config) as sim:

        async def go():
            async with IdeogramClient(sim.base_url, sim.api_key, max_inflight=limit) as client:
                batch = parse_batch(_csv(rows), key="lanterns")
                return await run_batch(batch, client, store, progress=progress, flush_every=4)

        summary = asyncio.run(go())
    assert summary.stored == rows
    workers = _worker_count(limit)
    # Workers and their image downloads, the producer, id writes, the main task.
    assert seen["tasks"] <= 2 * workers + 1 + limit + 1
    assert seen["tasks"] < rows
    # Three events per row at most, for rows in flight or not yet flushed.
    assert seen["ledger"] <= 3 * (workers + flush_every)
    assert list(store.list(f"{LEDGER_PREFIX}/")) == []


_ALLOCATOR_PROBE = """
import asyncio, sys
import pyarrow as pa
from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.runs.engine import run_batch
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore

before = pa.default_memory_pool().backend_name
with running_simulator(SimulatorConfig(latency_s=0.0, image_scale=0.25)) as sim:
    async def go():
        async with IdeogramClient(sim.base_url, sim.api_key, max_inflight=2) as client:
            batch = parse_batch(b"prompt\\nA quiet harbour at dawn\\n", key="probe")
            return await run_batch(batch, client, LocalStore(sys.argv[1]))
    summary = asyncio.run(go())
print(summary.stored, before, pa.default_memory_pool().backend_name)
"""


def test_the_engine_leaves_the_process_allocator_alone(tmp_path: Path) -> None:
    """Allocator tuning is process setup for entry points (runner.tune_process_memory):
    running a batch as a library call changes no process-wide setting."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    stored, before, after = out
    assert stored == "1"
    assert before != "system" and after == before


# -- the history views -------------------------------------------------------------------


def _records(
    batch: str, run: str, rows: list[tuple[int, str, str]], day: datetime
) -> list[GenerationRecord]:
    out = []
    for number, (row, attempt, status) in enumerate(rows):
        created = day + timedelta(minutes=number)
        out.append(
            GenerationRecord(
                id=f"{batch}-{row}-{attempt}".ljust(32, "0")[:32],
                batch=batch,
                row=row,
                image_index=0,
                prompt=f"A heron, study {row}",
                status=status,  # type: ignore[arg-type]
                attempt_id=attempt,
                created_at=created,
                date=created.date(),
                run_id=run,
            )
        )
    return out


def test_queries_get_the_views_they_name_and_search_stays_unicode_aware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    store = open_store(settings)
    day = datetime(2025, 3, 1, 9, tzinfo=UTC)
    records = _records("zoo", "run1", [(1, "a1", "stored"), (2, "a1", "stored")], day)
    # LATIN SMALL LETTER LONG S: already lower case, yet it case-folds to "s".
    records[0] = replace(records[0], prompt="A kangaroo at \u017funset")
    records[1] = replace(records[1], prompt="A KANGAROO, at SUNSET")
    HistoryTables(settings).write("zoo", records)

    assert views_for("SELECT count(*) FROM generations") == ("generations",)
    assert views_for("SELECT * FROM Generation_Records") == ("generation_records",)
    assert views_for("SHOW TABLES") == history.VIEWS  # the catalogue lists every view
    assert views_for("SELECT 1") == history.VIEWS
    con = sandboxed_connection(settings, store, sql="SELECT count(*) FROM generations")
    names = {
        row[0] for row in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }
    # `generations` is a view of the latest files' rows over the table attached as
    # `generations_all` (issue 17); the audit trail, not named, is not attached.
    assert "generations_all" in names and "generation_records" not in names
    assert con.execute("SELECT count(*) FROM generations").fetchone() == (2,)
    con.close()

    con = history.connect(settings, store, views=("generations",))
    found = [row["row"] for row in search(con, SearchFilters(text="sunset"))]
    assert sorted(found) == [1, 2]  # the non-ASCII prompt is not lost to the fast test
    newest_first = [row["row"] for row in search(con, SearchFilters(text="kanga*"))]
    assert newest_first == [2, 1]
    assert search(con, SearchFilters(text="roo")) == []
    con.close()


# -- the sensor --------------------------------------------------------------------------


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=build_resources()
    ) as context:
        return prompts_sensor(context)


def test_the_sensor_reads_only_files_whose_stat_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name in ("one", "two"):
        (prompts / f"{name}.csv").write_text(f"prompt\nA {name}\n", encoding="utf-8")
    an_hour_ago = time.time() - 3600
    for path in prompts.iterdir():
        os.utime(path, (an_hour_ago, an_hour_ago))
    monkeypatch.setenv("IDEOGRAM_PROMPTS_DIR", str(prompts))
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))  # no history: both run
    with dg.instance_for_test() as instance:
        first = _tick(instance, None)
        assert len(first.run_requests) == 2
        instance.add_dynamic_partitions("batches", ["one", "two"])
        # Same size and time: not read again, so even a same-length rewrite goes unseen.
        (prompts / "one.csv").write_text("prompt\nA eno\n", encoding="utf-8")
        os.utime(prompts / "one.csv", (an_hour_ago, an_hour_ago))
        quiet = _tick(instance, first.cursor)
        assert quiet.run_requests == [] and quiet.dynamic_partitions_requests == []
        # Touched, content unchanged: hashed again, no run.
        os.utime(prompts / "two.csv", (an_hour_ago + 60, an_hour_ago + 60))
        assert _tick(instance, quiet.cursor).run_requests == []
        # A cursor of the previous sensor version (key -> digest) is understood: without
        # sizes and times every file is hashed once, and only the rewritten one runs.
        old = {key: value[0] for key, value in json.loads(first.cursor)["files"].items()}
        assert [r.partition_key for r in _tick(instance, json.dumps(old)).run_requests] == ["one"]

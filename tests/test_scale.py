"""What keeps the pipeline flat at scale (issue 7), checked on small real runs.

Nothing is faked: the engine runs against the bundled simulator, storage is a real folder
or SeaweedFS, the history views run in DuckDB, the sensor against a real Dagster instance.
No assertion is about time; the benchmarks in ``benchmarks/`` measure that.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ideogram_pipeline import history, history_index, history_plan
from ideogram_pipeline.batches import parse_batch
from ideogram_pipeline.definitions import defs
from ideogram_pipeline.defs.sensors import prompts_sensor
from ideogram_pipeline.engine import _worker_count, run_batch
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.ideogram.polling import LatencyTracker, next_interval
from ideogram_pipeline.ideogram.simulator import SimulatorConfig, running_simulator
from ideogram_pipeline.ledger import LEDGER_PREFIX
from ideogram_pipeline.models import GenerationRequest
from ideogram_pipeline.query_sandbox import sandboxed_connection, views_for
from ideogram_pipeline.search import SearchFilters, search
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.storage import LocalStore, open_store
from ideogram_pipeline.storage.metadata import MetadataWriter


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


def test_later_polls_back_off_to_a_tenth_of_the_latency() -> None:
    gaps = [next_interval(n, 10.0) for n in range(1, 30)]
    assert gaps == sorted(gaps) and gaps[0] == pytest.approx(0.01) and gaps[-1] == 1.0
    assert next_interval(50, 0.05) == pytest.approx(0.01)  # never below the minimum gap


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

                async def noted(_id: str) -> None:
                    return None

                await asyncio.gather(*(client.generate_async(r, noted) for r in requests))
                return client

        client = asyncio.run(go())
        assert sim.stats.rate_limited == 0
    assert client.poll_budget.polls >= len(requests)
    assert client.poll_budget.peak_10s <= 55


# -- the engine --------------------------------------------------------------------------


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


# -- the history views -------------------------------------------------------------------


def _records(batch: str, run: str, rows: list[tuple[int, str, str]], day: datetime) -> list:
    out = []
    for number, (row, attempt, status) in enumerate(rows):
        created = day + timedelta(minutes=number)
        out.append(
            {
                "id": f"{batch}-{row}-{attempt}".ljust(32, "0")[:32],
                "row": row,
                "image_index": 0,
                "prompt": f"A heron, study {row}",
                "status": status,
                "attempt_id": attempt,
                "created_at": created,
                "date": created.date().isoformat(),
                "run_id": run,
                "tags": [],
            }
        )
    return out


def _portable(store: object, settings: Settings) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if settings.is_s3:
        from ideogram_pipeline.storage.duckdb_s3 import configure_duckdb_s3

        configure_duckdb_s3(con, settings)
    con.execute(history.view_sql(store))
    return con


def _rows(con: duckdb.DuckDBPyConnection, view: str) -> list[tuple]:
    sql = f'SELECT id, "row", status, attempt_id, date, batch FROM {view} ORDER BY ALL'
    return con.execute(sql).fetchall()


@pytest.mark.parametrize("root", ["local", "s3"])
def test_cached_hidden_rows_give_the_window_functions_answer(
    root: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = (
        request.getfixturevalue("s3_settings")
        if root == "s3"
        else load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    )
    store = open_store(settings)
    monkeypatch.setenv("IDEOGRAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(history_index, "CACHE_MIN_SECONDS", 0.0)
    monkeypatch.setattr(history_plan, "PLAN_MIN_FILES", 0)
    monkeypatch.setattr(history_plan, "PLANS_KEPT", 1)
    day = datetime(2025, 3, 1, 9, tzinfo=UTC)
    # One batch run once: nothing to hide, nothing computed.
    MetadataWriter(store, "run1").write(
        "simple", _records("simple", "run1", [(1, "a1", "stored")], day)
    )
    # A batch re-run the next day: row 2 failed, then stored by a later attempt.
    first = [(1, "a1", "stored"), (2, "a1", "failed"), (3, "a1", "unknown")]
    keys = MetadataWriter(store, "run1").write("rerun", _records("rerun", "run1", first, day))
    later = day + timedelta(days=1)
    MetadataWriter(store, "run2").write(
        "rerun", _records("rerun", "run2", [(2, "a2", "stored")], later)
    )
    # A storage failure finished by a later run: same id, newer record.
    finished = _records("rerun", "run3", [(3, "a1", "stored")], later + timedelta(hours=1))
    MetadataWriter(store, "run3").write("rerun", finished)
    # Compaction caught between writing its merged file and deleting the inputs.
    folder = keys[0].rpartition("/")[0]
    store.put_bytes(f"{folder}/compact-0123456789abcdef.parquet", store.get_bytes(keys[0]))
    # A file from an older version, without the newer columns (read with union_by_name).
    old = pa.Table.from_pylist(
        [
            {
                k: v
                for k, v in r.items()
                if k in ("id", "row", "status", "attempt_id", "created_at", "prompt")
            }
            for r in _records("legacy", "run0", [(1, "a0", "stored")], day)
        ]
    )
    buffer = io.BytesIO()
    pq.write_table(old, buffer)
    store.put_bytes(
        "metadata/generations/date=2025-03-01/batch=legacy/run0-0badf00d.parquet", buffer.getvalue()
    )

    expected = _portable(store, settings)
    con = history.connect(settings, store)
    for view in ("generation_records", "generations"):
        assert _rows(con, view) == _rows(expected, view)
    current = {(r[5], r[1]): r[2] for r in _rows(con, "generations")}
    assert current == {
        ("legacy", 1): "stored",
        ("simple", 1): "stored",
        ("rerun", 1): "stored",
        ("rerun", 2): "stored",
        ("rerun", 3): "stored",
    }
    assert len(_rows(con, "generation_records")) == 7
    con.close()
    cached = sorted(p.name for p in (tmp_path / "cache" / "history").glob("*.parquet"))
    assert len(cached) == 2 and ".schemas-" in cached[1]  # rows, schemas
    plans = list((tmp_path / "cache" / "history").glob("*.plans/*.json"))
    assert len(plans) == 1  # the listing's plan
    plans[0].with_suffix(".parquet").unlink()  # a plan without its rows is not trusted
    again = history.connect(settings, store)
    assert _rows(again, "generations") == _rows(expected, "generations")
    again.close()
    with monkeypatch.context() as planned_only:
        _refuse_planning(planned_only)
        again = history.connect(settings, store)  # from the plan this time
        for view in ("generation_records", "generations"):
            assert _rows(again, view) == _rows(expected, view)
        again.close()
    # A description that disagrees with its rows is re-planned, not trusted.
    described = json.loads(plans[0].read_text())
    plans[0].write_text(json.dumps({**described, "dirty": {"generations": [0]}}))
    again = history.connect(settings, store)
    assert _rows(again, "generations") == _rows(expected, "generations")
    again.close()
    # A new file is a new listing: planned afresh, never answered from the old plan.
    retry = _records("rerun", "run4", [(1, "a4", "failed")], later + timedelta(hours=2))
    MetadataWriter(store, "run4").write("rerun", retry)
    expected.close()
    expected = _portable(store, settings)
    again = history.connect(settings, store)
    assert _rows(again, "generations") == _rows(expected, "generations")
    assert ("rerun", 1, "failed") in {(r[5], r[1], r[2]) for r in _rows(again, "generations")}
    again.close()
    expected.close()
    plans = list((tmp_path / "cache" / "history").glob("*.plans/*"))
    assert len(plans) == 2  # PLANS_KEPT = 1: the older listing's plan is gone
    # Without the legacy file every file has the same columns: the views read their file
    # lists from DuckDB variables, from the plan too, and a statement gets only its view.
    store.delete(["metadata/generations/date=2025-03-01/batch=legacy/run0-0badf00d.parquet"])
    expected = _portable(store, settings)
    again = history.connect(settings, store)
    assert again.execute("SELECT getvariable('_history_generations_clean')").fetchone()[0]
    assert _rows(again, "generations") == _rows(expected, "generations")
    again.close()
    with monkeypatch.context() as planned_only:
        _refuse_planning(planned_only)
        again = history.connect(settings, store, views=("generations",), one_query=True)
        assert _rows(again, "generations") == _rows(expected, "generations")
        again.close()
    expected.close()


def _refuse_planning(patch: pytest.MonkeyPatch) -> None:
    """Make working a plan out fail, so a connection can only succeed from a cached one."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("planned afresh instead of from the cache")

    patch.setattr(history_plan, "load_hidden_rows", refuse)
    patch.setattr(history_plan, "same_schema", refuse)


def test_queries_get_the_views_they_name_and_search_stays_unicode_aware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    store = open_store(settings)
    monkeypatch.setenv("IDEOGRAM_CACHE_DIR", str(tmp_path / "cache"))
    day = datetime(2025, 3, 1, 9, tzinfo=UTC)
    records = _records("zoo", "run1", [(1, "a1", "stored"), (2, "a1", "stored")], day)
    # LATIN SMALL LETTER LONG S: already lower case, yet it case-folds to "s".
    records[0]["prompt"] = "A kangaroo at \u017funset"
    records[1]["prompt"] = "A KANGAROO, at SUNSET"
    MetadataWriter(store, "run1").write("zoo", records)

    assert views_for("SELECT count(*) FROM generations") == ("generations",)
    assert views_for("SELECT * FROM Generation_Records") == ("generation_records",)
    assert views_for("SHOW TABLES") == history.VIEWS  # the catalogue lists every view
    assert views_for("SELECT 1") == history.VIEWS
    con = sandboxed_connection(settings, store, sql="SELECT count(*) FROM generations")
    names = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert "generations" in names and "generation_records" not in names
    assert con.execute("SELECT count(*) FROM generations").fetchone() == (2,)
    con.close()

    con = history.connect(settings, store, views=("generations",), one_query=True)
    found = [row["row"] for row in search(con, SearchFilters(text="sunset"))]
    assert sorted(found) == [1, 2]  # the non-ASCII prompt is not lost to the fast test
    newest_first = [row["row"] for row in search(con, SearchFilters(text="kanga*"))]
    assert newest_first == [2, 1]
    assert search(con, SearchFilters(text="roo")) == []
    con.close()


# -- the sensor --------------------------------------------------------------------------


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
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

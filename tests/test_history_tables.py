"""The history tables: current state by MERGE, the audit trail, plain-client reads, and
concurrent writers, on a local folder and on SeaweedFS.

Nothing is faked: Delta tables written by ``deltalake``, read by DuckDB's ``delta``
extension, concurrent writers as separate processes.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.history.duckdb_s3 import duckdb_init_sql, extension_path
from ideogram_pipeline.history.schema import (
    ROW_KEY,
    TABLE_SCHEMA,
    GenerationRecord,
    records_table,
)
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, HistoryTables
from ideogram_pipeline.settings import Settings, load_settings
from tests.conftest import make_env

DAY = datetime(2025, 3, 1, 9, tzinfo=UTC)
CLI = [sys.executable, "-c", "from ideogram_pipeline.cli import main; main()"]


def _record(batch: str, row: int, attempt: str, status: str, **extra: Any) -> GenerationRecord:
    index = extra.pop("image_index", 0)
    created = extra.pop("created_at", DAY + timedelta(minutes=row))
    return GenerationRecord.from_row(
        {
            "batch": batch,
            "id": f"{batch}-{row}-{attempt}-{index}".ljust(32, "0")[:32],
            "row": row,
            "image_index": index,
            "prompt": f"A heron, study {row}",
            "status": status,
            "attempt_id": attempt,
            "created_at": created,
            "date": created.date().isoformat(),
            "cost_usd": 0.05 if status == "stored" else 0.0,
            "tags": [],
            **extra,
        }
    )


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "s3":
        return request.getfixturevalue("s3_settings")
    return load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})


def _rows(con: duckdb.DuckDBPyConnection, view: str) -> list[tuple[Any, ...]]:
    sql = f'SELECT batch, "row", image_index, status, attempt_id, id FROM {view} ORDER BY ALL'
    return con.execute(sql).fetchall()


def _plain_client(settings: Settings, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """A user's own DuckDB: extensions installed from the wheels, then duckdb-init's SQL."""
    con = duckdb.connect(config={"extension_directory": str(tmp_path / "extensions")})
    con.execute(f"INSTALL '{extension_path('delta')}'")
    if settings.is_s3:
        con.execute(f"INSTALL '{extension_path('httpfs')}'")
    con.execute(duckdb_init_sql(settings, with_credentials=True))
    return con


def test_generations_holds_one_current_row_per_key(settings: Settings, tmp_path: Path) -> None:
    tables = HistoryTables(settings)
    first = [
        _record("rerun", 1, "a1", "stored"),
        _record("rerun", 2, "a1", "failed"),
        _record("rerun", 3, "a1", "failed", failure_kind="storage"),
        _record("rerun", 4, "a1", "stored", image_index=0),
        _record("rerun", 4, "a1", "stored", image_index=1),
    ]
    tables.write("rerun", first)
    later = DAY + timedelta(days=1)
    tables.write(
        "rerun",
        [
            # Row 2 failed, then stored by a later attempt (on another day).
            _record("rerun", 2, "a2", "stored", created_at=later),
            # Row 3's storage failure finished from the ledger: same attempt, same id.
            _record("rerun", 3, "a1", "stored", created_at=later),
            # Row 4 re-done with one image: its older second image goes.
            _record("rerun", 4, "a2", "stored", created_at=later),
        ],
        stale_rows=[2, 3, 4],
    )
    # A late writer of an older attempt never replaces a newer one.
    tables.write("rerun", [_record("rerun", 2, "a0", "failed")], stale_rows=[2])

    con = history.connect(settings)
    current = _rows(con, "generations")
    assert [(b, r, i, s, a) for b, r, i, s, a, _ in current] == [
        ("rerun", 1, 0, "stored", "a1"),
        ("rerun", 2, 0, "stored", "a2"),
        ("rerun", 3, 0, "stored", "a1"),
        ("rerun", 4, 0, "stored", "a2"),
    ]
    assert con.execute("SELECT count(*) FROM generation_records").fetchone() == (9,)
    assert con.execute(
        'SELECT DISTINCT date::VARCHAR FROM generations WHERE "row" = 2'
    ).fetchall() == [("2025-03-02",)]
    # A plain DuckDB client with the documented statements sees the same rows.
    plain = _plain_client(settings, tmp_path)
    for view in ("generations", "generation_records"):
        assert _rows(plain, view) == _rows(con, view)
    con.close()
    plain.close()


def test_a_record_with_an_unknown_column_is_refused_where_it_is_built() -> None:
    with pytest.raises(TypeError, match="colour"):
        _record("typo", 1, "a1", "stored", colour="x")
    with pytest.raises(ValueError, match="unknown status 'sotred'"):
        _record("typo", 1, "a1", "sotred")


def test_the_schema_is_the_record() -> None:
    """Every field of the record is a column of the table, in order, and back."""
    record = _record("one", 1, "a1", "stored", tags=("x",), seed=2**40)
    table = records_table([record], DAY)
    assert table.schema.equals(TABLE_SCHEMA)
    assert TABLE_SCHEMA.names[-2:] == ["date", "batch"]
    [row] = table.to_pylist()
    assert row == {**record.as_row(), "tags": ["x"], "recorded_at": DAY}
    assert TABLE_SCHEMA.field("row").type == pa.int32()
    assert TABLE_SCHEMA.field("seed").type == pa.int64()


def test_records_of_another_batch_are_refused(tmp_path: Path) -> None:
    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    with pytest.raises(ValueError, match="records of batch other written as batch 'mine'"):
        HistoryTables(settings).write("mine", [_record("other", 1, "a1", "stored")])
    assert not HistoryTables(settings).exists(RECORDS)


def test_an_empty_root_has_empty_typed_views(tmp_path: Path) -> None:
    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    con = history.connect(settings)
    assert con.execute("SELECT count(*), sum(cost_usd) FROM generations").fetchone() == (0, None)
    names = {row[0] for row in con.execute("DESCRIBE generation_records").fetchall()}
    assert {"id", "tags", "pinned", "event", "date", "batch"} <= names
    con.close()


_WRITER = """
import sys
from datetime import UTC, datetime
from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.settings import load_settings

batch, rows = sys.argv[1], int(sys.argv[2])
tables = HistoryTables(load_settings())
now = datetime.now(UTC)
for row in range(1, rows + 1):
    record = GenerationRecord(
        id=f"{batch}-{row}".ljust(32, "0")[:32], batch=batch, row=row, image_index=0,
        status="stored", attempt_id="a1", created_at=now, date=now.date(), cost_usd=0.05,
        tags=("run",),
    )
    tables.write(batch, [record])
"""

_CHANGER = """
import sys
from ideogram_pipeline.history.pins import set_pinned
from ideogram_pipeline.history.tags import change_tags
from ideogram_pipeline.settings import load_settings

settings = load_settings()
kind, record_id, *values = sys.argv[1:]
for value in values:
    if kind == "tag":
        change_tags(settings, [record_id], add=[value])
    else:
        set_pinned(settings, [value], True)
"""


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(
    settings: Settings, request: pytest.FixtureRequest
) -> None:
    """Two batches flushing row by row, two people tagging one record, one pinning, and a
    retention cleanup, all at once, as separate processes: every row once, every tag,
    every pin, and only the expired records gone."""
    tables = HistoryTables(settings)
    now = datetime.now(UTC)
    seed = [
        _record("shared", row, "a1", "stored", tags=["base"], created_at=now) for row in range(1, 7)
    ]
    tables.write("shared", seed)
    tables.write("expired", [_record("expired", row, "a1", "stored") for row in range(1, 6)])
    target = seed[0].id
    server = request.getfixturevalue("s3_server") if settings.is_s3 else None
    env = make_env(server=server, storage=settings.storage)
    processes = [
        [sys.executable, "-c", _WRITER, "alpha", "8"],
        [sys.executable, "-c", _WRITER, "beta", "8"],
        [sys.executable, "-c", _CHANGER, "tag", target, "t1", "t2", "t3", "t4"],
        [sys.executable, "-c", _CHANGER, "tag", target, "u1", "u2", "u3", "u4"],
        [sys.executable, "-c", _CHANGER, "pin", "-", *(r.id for r in seed[1:])],
        [*CLI, "cleanup", "--older-than", "30"],
    ]
    running = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for args in processes
    ]
    for process in running:
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, output.decode()

    con = history.connect(settings)
    keys = ", ".join(f'"{k}"' for k in ROW_KEY)
    assert con.execute(
        f"SELECT count(*), count(DISTINCT ({keys})) FROM generations"
    ).fetchone() == (6 + 8 + 8, 6 + 8 + 8)
    [(tags,)] = con.execute("SELECT tags FROM generations WHERE id = ?", [target]).fetchall()
    assert sorted(tags) == sorted(["base", "t1", "t2", "t3", "t4", "u1", "u2", "u3", "u4"])
    assert con.execute(
        "SELECT count(*) FILTER (pinned), count(*) FROM generations WHERE batch = 'shared'"
    ).fetchone() == (5, 6)
    # The audit trail has every write and every change.
    assert con.execute(
        "SELECT event, count(*) FROM generation_records GROUP BY ALL ORDER BY 1"
    ).fetchall() == [("generate", 6 + 16), ("pin", 5), ("tag", 8)]
    # The cleanup took exactly the expired batch, and kept its usage for the reports.
    assert con.execute("SELECT count(*) FROM generations WHERE batch = 'expired'").fetchone() == (
        0,
    )
    con.close()
    usage = history.connect(settings, views=("usage_rollup",))
    assert usage.execute("SELECT batch, count(*) FROM usage_rollup GROUP BY ALL").fetchall() == [
        ("expired", 5)
    ]
    usage.close()
    assert tables.table(GENERATIONS).version() > 0


_FLUSHER = """
import sys
from datetime import UTC, datetime
from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.settings import load_settings

tables = HistoryTables(load_settings())
now = datetime.now(UTC)
for start in range(0, 60, 3):
    # Each flush re-states the rows written so far with a newer attempt, so every MERGE
    # rewrites files as well as adding them.
    records = [
        GenerationRecord(
            id=f"row-{row}-{start}".ljust(32, "0")[:32], batch="crashy", row=row,
            image_index=0, status="stored", attempt_id=f"{start:04d}", created_at=now,
            date=now.date(), cost_usd=0.05,
        )
        for row in range(1, start + 4)
    ]
    tables.write("crashy", records, stale_rows=list(range(1, start + 1)))
    print(start, flush=True)
"""


@pytest.mark.slow
def test_a_writer_killed_mid_merge_leaves_a_consistent_table(tmp_path: Path) -> None:
    """SIGKILL a writer while it MERGEs, three times: each time the tables read whole (the
    rows of some committed version, one per key), and a run to the end finishes the work."""
    import random
    import signal
    import time

    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    env = make_env(storage=settings.storage)
    rng = random.Random(7)
    for _ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", _FLUSHER], env=env, stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        writer.stdout.readline()  # one flush committed: the next ones are under way
        time.sleep(rng.uniform(0.05, 0.6))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        con = history.connect(settings)
        rows = con.execute(
            'SELECT count(*), count(DISTINCT "row"), count(DISTINCT attempt_id) FROM generations'
        ).fetchone()
        con.close()
        assert rows is not None and rows[0] == rows[1] and rows[2] == 1, rows
    finished = subprocess.run([sys.executable, "-c", _FLUSHER], env=env, capture_output=True)
    assert finished.returncode == 0, finished.stderr
    con = history.connect(settings)
    assert con.execute(
        'SELECT count(*), count(DISTINCT "row"), min(attempt_id), max(attempt_id) FROM generations'
    ).fetchone() == (60, 60, "0057", "0057")
    con.close()

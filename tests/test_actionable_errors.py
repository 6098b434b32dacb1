"""Errors a person can act on: every bad field of a row at once, a storage root that is a
file called a file, and ``query`` stopped by its memory and time limits, never by SQL.

Nothing is faked: rows go through the real batch parser and a real run against the
simulator on loopback, the storage root is a real file on disk, and queries run in the real
DuckDB sandbox through the CLI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.sandbox import QueryLimitReached, QueryLimits, query_rows
from ideogram_pipeline.ideogram.generation import RejectedRow
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import Simulator
from ideogram_pipeline.storage.base import StoragePreflightError
from ideogram_pipeline.storage.local import LocalStore
from tests.lifecycle_support import make_root, simulator_running

BAD_ROW = "prompt,seed,num_images,aspect_ratio,style_type\nA fox,abc,99,7x3,WEIRD\n"
#: Runs for hours unless stopped: a hash per row of a hundred billion rows.
ENDLESS = "SELECT sum(hash(i)) FROM range(100000000000) t(i)"
#: A 200 MB string in one piece: nothing DuckDB can spill to disk.
HUNGRY = "SELECT length(string_agg(i::VARCHAR, ',')) FROM range(30000000) t(i)"


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with simulator_running() as sim:
        yield sim


def _cli(args: list[str], **env: str) -> tuple[int, str]:
    cleared: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("IDEOGRAM_", "AWS_"))
    }
    done = CliRunner().invoke(main, args, env={**cleared, **env})
    return done.exit_code, done.output


def test_every_bad_field_of_a_row_in_one_message() -> None:
    (row,) = parse_batch(BAD_ROW.encode(), source="bad.csv", key="bad").rows
    assert isinstance(row, RejectedRow)
    assert row.field == "seed"  # the first, for code that reads one field
    for field, value in (
        ("seed", "'abc'"),
        ("num_images", "'99'"),
        ("aspect_ratio", "'7x3'"),
        ("style_type", "'WEIRD'"),
    ):
        assert f"field '{field}': {value}" in row.error, row.error
    # A bad model: the rules that depend on it are not guessed at, the others still run.
    text = "prompt,model,negative_prompt,aspect_ratio,resolution\n,V_9,a\x00b,16x9,1024x1024\n"
    (row,) = parse_batch(text.encode(), source="m.csv", key="m").rows
    assert isinstance(row, RejectedRow)
    assert row.error.startswith("row 1: field 'prompt': is empty; field 'model': 'V_9'")
    assert "field 'negative_prompt': contains a NUL" in row.error
    assert "field 'resolution': aspect_ratio and resolution cannot be used together" in row.error
    # One bad field reads as before.
    (row,) = parse_batch(b"prompt,seed\nA fox,abc\n", source="s.csv", key="s").rows
    assert isinstance(row, RejectedRow) and row.error.count("field '") == 1


def test_the_recorded_error_names_every_bad_field(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root("local", tmp_path, simulator, request)
    rows = [("A fox", "abc", "99", "7x3", "WEIRD"), ("A cat", "", "", "", "")]
    summary = root.batch("bad", rows, header=BAD_ROW.split("\n")[0])
    assert (summary.rejected, summary.stored) == (1, 1)
    (error,) = root.query("SELECT error FROM generations WHERE status = 'rejected'")[0]
    assert all(f"field '{f}'" in error for f in ("seed", "num_images", "aspect_ratio"))


def test_a_storage_root_that_is_a_file_is_called_a_file(tmp_path: Path) -> None:
    plain = tmp_path / "data"
    plain.write_text("not a folder", encoding="utf-8")
    with pytest.raises(StoragePreflightError, match=r"is a file, not a folder"):
        LocalStore(plain).preflight()
    with pytest.raises(StoragePreflightError, match=rf"{plain} is a file, not a folder"):
        LocalStore(plain / "sub" / "root").preflight()
    LocalStore(tmp_path / "fine" / "root").preflight()  # a missing folder is made

    csv = tmp_path / "b.csv"
    csv.write_text("prompt\nA lighthouse at dawn\n", encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    for args in (["run", str(csv)], ["run", str(csv), "--dry-run"]):
        code, output = _cli(args, IDEOGRAM_STORAGE=str(plain), DAGSTER_HOME=str(home))
        assert code != 0, output
        assert f"storage root {plain} is a file, not a folder" in output, output
        assert "Traceback" not in output and "Stack Trace" not in output
    assert plain.read_text(encoding="utf-8") == "not a folder"


def test_query_stops_at_its_time_limit(tmp_path: Path) -> None:
    env = {"IDEOGRAM_STORAGE": str(tmp_path / "root")}
    started = time.monotonic()
    code, output = _cli(["query", ENDLESS, "--timeout", "1"], **env)
    assert code != 0 and "stopped after 1 s" in output and "--timeout" in output, output
    assert time.monotonic() - started < 30
    with pytest.raises(QueryLimitReached, match="time limit"):
        query_rows(load_settings(env), ENDLESS, limits=QueryLimits(timeout_s=0.5))
    code, output = _cli(["query", "SELECT 42 AS answer", "--timeout", "5"], **env)
    assert code == 0 and "42" in output


def test_query_runs_under_a_memory_limit_sql_cannot_raise(tmp_path: Path) -> None:
    env = {"IDEOGRAM_STORAGE": str(tmp_path / "root")}
    code, output = _cli(["query", HUNGRY, "--memory-limit", "64MB"], **env)
    assert code != 0 and "memory limit of 64MB" in output and "--memory-limit" in output
    code, output = _cli(["query", HUNGRY, "--memory-limit", "1GB"], **env)
    assert code == 0, output

    settings = load_settings(env)
    _, [(limit,)] = query_rows(settings, "SELECT current_setting('memory_limit')")
    assert "GiB" in limit and float(limit.split()[0]) < 2.0  # the default: 2 GB
    for sql in ("SET memory_limit = '100GB'", "RESET memory_limit", "PRAGMA memory_limit='9GB'"):
        code, output = _cli(["query", sql, "--memory-limit", "64MB"], **env)
        assert code != 0, (sql, output)
    code, output = _cli(["query", "SELECT 1", "--memory-limit", "lots"], **env)
    assert code == 2 and "not a size" in output

"""Record ids as people type them: every command takes a unique prefix, through one resolver.

Nothing is faked: real batches against the simulator on loopback write the Delta tables of a
local root, the commands run through the real CLI, and a real cleanup judges what stays.
Two records whose ids share a prefix are written through the tables' own writer (a batch's
ids are hashes: two sharing eight characters would take a few billion records).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.simulator.server import Simulator
from tests.lifecycle_support import Root, make_root, run_cli, simulator_running

ROWS = [("A red fox in fresh snow", ""), ("A cat asleep on a piano", "")]


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with simulator_running() as sim:
        yield sim


@pytest.fixture
def root(tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest) -> Root:
    root = make_root("local", tmp_path, simulator, request)
    root.batch("ids", ROWS)
    return root


def _twins(root: Root, prefix: str) -> list[str]:
    """Two current records, in batch ``twins``, whose ids both begin with ``prefix``."""
    now = datetime.now(UTC)
    ids = [f"{prefix}{tail}".ljust(32, "0") for tail in ("a1", "b2")]
    records = [
        GenerationRecord(
            id=record_id,
            batch="twins",
            row=row,
            image_index=0,
            status="failed",
            attempt_id="a1",
            created_at=now,
            date=now.date(),
            cost_usd=0.0,
        )
        for row, record_id in enumerate(ids, start=1)
    ]
    HistoryTables(root.settings).write("twins", records)
    return ids


def test_every_id_command_takes_a_unique_prefix(root: Root) -> None:
    (fox,) = root.ids("prompt LIKE 'A red fox%'")
    prefix = fox[:8].upper()  # any case, leading and trailing spaces ignored
    pinned = run_cli(root, ["pin", f" {prefix} "])
    assert pinned.returncode == 0, pinned
    assert f"pinned {fox}" in pinned.stdout
    assert root.query("SELECT pinned FROM generations WHERE id = ?", [fox]) == [(True,)]
    again = run_cli(root, ["pin", prefix])
    assert again.returncode == 0 and "was already pinned" in again.stdout
    unpinned = run_cli(root, ["unpin", fox[:6]])
    assert unpinned.returncode == 0 and f"unpinned {fox}" in unpinned.stdout

    tagged = run_cli(root, ["tag", fox[:7], "--add", "keep"])
    assert tagged.returncode == 0, tagged
    assert root.query("SELECT tags FROM generations WHERE id = ?", [fox]) == [(["keep"],)]

    inspected = run_cli(root, ["inspect", fox[:6]])
    assert inspected.returncode == 0, inspected
    assert "A red fox in fresh snow" in inspected.stdout and fox in inspected.stdout

    planned = run_cli(root, ["reproduce", fox[:6], "--dry-run", "--format", "json"])
    assert planned.returncode == 0, planned
    assert fox in planned.stdout


def test_an_ambiguous_prefix_is_refused_with_its_candidates(root: Root) -> None:
    first, second = _twins(root, "abcdef12")
    for command in (["pin"], ["unpin"], ["tag", "--add", "x"], ["inspect"], ["reproduce"]):
        done = run_cli(root, [*command, "abcdef12"])
        assert done.returncode != 0, (command, done)
        assert "ambiguous" in done.stderr and "begins 2 records" in done.stderr, done
        assert first in done.stderr and second in done.stderr
        assert "batch twins, row 1" in done.stderr
    assert root.query("SELECT count(*) FROM generations WHERE pinned OR len(tags) > 0") == [(0,)]
    # One more character makes it unique; a full id is never ambiguous.
    assert run_cli(root, ["pin", "abcdef12a"]).returncode == 0
    assert run_cli(root, ["unpin", first]).returncode == 0


def test_a_pin_that_names_nothing_fails_loudly(root: Root) -> None:
    for bad, message in (
        ("0123456789", "no record with id '0123456789'"),
        ("abc", "too short"),
    ):
        for command in ("pin", "unpin", "tag", "inspect", "share"):
            args = [command, bad, "--add", "x"] if command == "tag" else [command, bad]
            done = run_cli(root, args)
            assert done.returncode != 0, (command, done)
            if command != "share":  # a local root refuses share before looking the id up
                assert message in done.stderr, (command, done)
    assert root.query("SELECT count(*) FROM generations WHERE pinned") == [(0,)]


def test_cleanup_keeps_a_superseded_record_the_user_pinned(root: Root) -> None:
    """A row changed in the file (another prompt) leaves the file's rows (issue 17: its
    record stays, ``in_file`` false); pinning that record by prefix still protects it
    from cleanup."""
    (old,) = root.ids("prompt LIKE 'A red fox%'")
    (cat,) = root.ids("prompt LIKE 'A cat%'")
    root.batch("ids", [("A blue fox in fresh snow", ""), ROWS[1]])
    assert old not in root.current_ids("in_file")
    pinned = run_cli(root, ["pin", old[:10]])
    assert pinned.returncode == 0, pinned
    assert f"pinned {old}" in pinned.stdout
    assert "was already pinned" in run_cli(root, ["pin", old[:10]]).stdout

    later = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    cleaned = run_cli(root, ["cleanup", "--older-than", "30", "--as-of", later])
    assert cleaned.returncode == 0, cleaned
    assert old in root.ids() and cat not in root.ids()
    (key,) = root.query("SELECT DISTINCT image_key FROM generation_records WHERE id = ?", [old])
    assert root.store.head(key[0]) is not None  # the image itself stayed too


@pytest.mark.s3
def test_share_resolves_prefixes_like_every_other_command(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root("s3", tmp_path, simulator, request)
    root.batch("ids", ROWS[:1])
    (fox,) = root.ids()
    shared = run_cli(root, ["share", fox[:6], "--expires", "60"])
    assert shared.returncode == 0, shared
    assert f"record {fox}" in shared.stderr and shared.stdout.startswith("http")
    first, second = _twins(root, "abcdef12")
    refused = run_cli(root, ["share", "abcdef12"])
    assert refused.returncode != 0 and "ambiguous" in refused.stderr
    assert first in refused.stderr and second in refused.stderr

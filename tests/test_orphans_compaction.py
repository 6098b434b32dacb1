"""The orphan sweep and compaction on local and S3 roots.

Real batches against the bundled simulator write the Delta tables; orphans are planted by
writing and deleting real objects through the store; DuckDB queries the result.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ideogram_pipeline.history.tables import GENERATIONS, RECORDS
from ideogram_pipeline.lifecycle.compaction import compact
from ideogram_pipeline.lifecycle.orphans import verify_stored_objects
from ideogram_pipeline.lifecycle.policy import RetentionPolicy
from ideogram_pipeline.lifecycle.retention import run_cleanup
from ideogram_pipeline.simulator.server import Simulator
from tests.lifecycle_support import Root, make_root, run_cli, simulator_running

KINDS = ["local", pytest.param("s3", marks=pytest.mark.s3)]
PNG = b"\x89PNG\r\n\x1a\n" + b"planted" * 10


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with simulator_running() as sim:
        yield sim


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_orphan_sweep_finds_and_fixes_planted_orphans(
    kind: str, tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root(kind, tmp_path, simulator, request)
    root.batch("sweep", [("A copper kettle", ""), ("A paper lantern", ""), ("A tin drum", "")])
    orphan = "images/2020/01/01/planted-orphan.png"
    root.store.put_bytes(orphan, PNG, content_type="image/png")
    (lost_id, lost_key) = root.query(
        "SELECT id, image_key FROM generations WHERE prompt = 'A paper lantern'"
    )[0]
    root.store.delete([lost_key])  # the row now points at nothing

    found = run_cli(root, ["cleanup", "--orphans", "--grace-hours", "0"])
    assert found.returncode == 0, found.stderr
    assert f"orphan object {orphan}" in found.stdout
    assert f"dangling row {lost_id}" in found.stdout
    assert "nothing changed" in found.stdout
    assert orphan in root.objects("images/")  # reporting changes nothing

    # Within the default grace period (24 h) a new object may belong to a running batch.
    young = run_cli(root, ["cleanup", "--orphans", "--fix"])
    assert young.returncode == 0, young.stderr
    assert "younger objects without a row: 1" in young.stdout
    assert orphan in root.objects("images/")
    status, error = root.query("SELECT status, error FROM generations WHERE id = ?", [lost_id])[0]
    assert status == "failed" and "image object missing" in error  # the current row: UPDATEd
    # The audit trail keeps the original record and adds the marked one.
    events = root.query(
        "SELECT event, status FROM generation_records WHERE id = ? ORDER BY recorded_at",
        [lost_id],
    )
    assert events == [("generate", "stored"), ("sweep", "failed")]

    fixed = run_cli(root, ["cleanup", "--orphans", "--fix", "--grace-hours", "0"])
    assert "deleted 1 orphan objects" in fixed.stdout, fixed.stdout
    assert "dangling rows (stored, object missing): 0" in fixed.stdout
    assert orphan not in root.objects("images/")
    assert verify_stored_objects(root.settings, root.store).ok
    sampled = verify_stored_objects(root.settings, root.store, limit=1)  # a large history
    assert (sampled.checked, sampled.total, sampled.ok) == (1, 2, True)
    assert len(root.ids()) == 3 and len(root.current_ids()) == 3  # marked, not duplicated
    audits = [k for k in root.objects("metadata/audit/orphans/") if k.endswith(".json")]
    assert len(audits) == 2


def test_a_superseded_record_without_its_object_is_marked_too(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    """A stored record replaced by a re-run still claims its image: when the image is gone,
    the sweep appends a marked record for it (it has no current row to UPDATE)."""
    root = make_root("local", tmp_path, simulator, request)
    root.batch("redo", [("A weather vane", "")])
    (old_id, old_key) = root.query("SELECT id, image_key FROM generations")[0]
    root.batch("redo", [("A weather vane at dusk", "")])  # row 1 again, a new request
    # The changed row is new content (issue 17): the old one left the file, its record kept.
    assert old_id not in root.current_ids("in_file")
    root.store.delete([old_key])
    assert not verify_stored_objects(root.settings, root.store).ok
    fixed = run_cli(root, ["cleanup", "--orphans", "--fix"])
    assert fixed.returncode == 0 and "marked 1 rows failed" in fixed.stdout, fixed.stdout
    assert verify_stored_objects(root.settings, root.store).ok
    newest = root.query(
        "SELECT event, status FROM generation_records WHERE id = ? ORDER BY recorded_at DESC",
        [old_id],
    )[0]
    assert newest == ("sweep", "failed")


KINDS_OF_ROW = (("busy", ""), ("kept", "keep"))
QUERIES = [
    "SELECT * EXCLUDE (tags), list_sort(tags) FROM generation_records ORDER BY id, recorded_at",
    "SELECT * EXCLUDE (tags) FROM generations ORDER BY id",
    "SELECT batch, status, count(*), sum(cost_usd), sum(size_bytes) FROM generations "
    "GROUP BY ALL ORDER BY ALL",
]


def _answers(root: Root) -> list[list[tuple[Any, ...]]]:
    return root.queries(QUERIES)


def _file_counts(root: Root) -> dict[str, int]:
    return {name: len(root.data_files(name)[0]) for name in (GENERATIONS, RECORDS)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_compaction_keeps_every_answer_and_reduces_files(
    kind: str, tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root(kind, tmp_path, simulator, request)
    for number in range(3):  # three runs of one batch: three appends to one partition
        root.batch("posters", [(f"A poster, version {number}", ""), ("A shared row", "")])
    root.batch("single", [("A lone file", "")])
    (row,) = root.ids("prompt = 'A lone file'")
    assert run_cli(root, ["tag", row, "--add", "lone"]).returncode == 0
    before = _answers(root)
    files = _file_counts(root)
    assert files[RECORDS] == 5  # one per flush and one for the tag change

    result = compact(root.settings, target_bytes=10 * 1024 * 1024, vacuum_hours=0)
    assert _answers(root) == before
    after = _file_counts(root)
    assert after == {GENERATIONS: 2, RECORDS: 2}  # one file per partition
    assert result.tables[RECORDS]["files_before"] == files[RECORDS]
    assert (result.files_before, result.files_after) == (sum(files.values()), 4)
    for name in (GENERATIONS, RECORDS):
        referenced, stored = root.data_files(name)
        assert referenced == stored  # the replaced files were vacuumed

    # Nothing left to merge: a second run changes nothing, through the CLI too.
    again = run_cli(root, ["compact"])
    assert again.returncode == 0 and "files: 4 -> 4" in again.stdout, again.stdout
    assert _answers(root) == before


@pytest.mark.slow
def test_compaction_and_cleanup_at_once_need_no_lock(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    """Both rewrite the same files; Delta orders the commits and the loser retries."""
    root = make_root("local", tmp_path, simulator, request)
    for runs in range(1, 4):  # the batch file grows: each run appends two new rows
        rows = [(f"A {kind} poster {n}", tag) for n in range(runs) for kind, tag in KINDS_OF_ROW]
        root.batch("busy", rows)
    keep = root.ids("list_contains(tags, 'keep')")
    later = datetime.now(UTC) + timedelta(days=31)
    errors: list[BaseException] = []

    def run(job: Any) -> None:
        try:
            job()
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    jobs = [
        lambda: compact(root.settings),
        lambda: run_cleanup(root.settings, root.store, RetentionPolicy(default_days=30), later),
    ]
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(keep) == 3 and root.ids() == root.current_ids() == keep
    assert root.image_keys() == {
        k for (k,) in root.query("SELECT image_key FROM generations WHERE status = 'stored'")
    }

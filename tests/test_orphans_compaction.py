"""The orphan sweep and compaction on local and S3 roots.

Real batches against the bundled simulator write the history; orphans are planted by
writing and deleting real objects through the store; DuckDB queries the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from ideogram_pipeline.compaction import compact, count_files
from ideogram_pipeline.ideogram.simulator import Simulator
from ideogram_pipeline.lifecycle import LifecycleBusy, LifecycleLock
from ideogram_pipeline.orphans import verify_stored_objects
from ideogram_pipeline.storage.metadata import GENERATIONS_PREFIX
from tests.lifecycle_support import Root, make_root, run_cli, simulator_running

KINDS = ["local", pytest.param("s3", marks=pytest.mark.s3)]
PNG = b"\x89PNG\r\n\x1a\n" + b"planted" * 10


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with simulator_running() as sim:
        yield sim


@pytest.mark.parametrize("kind", KINDS)
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
    assert status == "failed" and "image object missing" in error  # the dangling row is marked

    fixed = run_cli(root, ["cleanup", "--orphans", "--fix", "--grace-hours", "0"])
    assert "deleted 1 orphan objects" in fixed.stdout, fixed.stdout
    assert orphan not in root.objects("images/")
    assert root.image_keys() == root.stored_keys()
    assert verify_stored_objects(root.settings, root.store).ok
    sampled = verify_stored_objects(root.settings, root.store, limit=1)  # a large history
    assert (sampled.checked, sampled.total, sampled.ok) == (1, 2, True)
    assert len(root.ids()) == 3  # marking rewrote the row, it did not duplicate or drop it
    audits = [k for k in root.objects("metadata/audit/orphans/") if k.endswith(".json")]
    assert len(audits) == 2


QUERIES = [
    "SELECT * EXCLUDE (tags), list_sort(tags) FROM generation_records ORDER BY id",
    "SELECT * EXCLUDE (tags) FROM generations ORDER BY id",
    "SELECT batch, status, count(*), sum(cost_usd), sum(size_bytes) FROM generations "
    "GROUP BY ALL ORDER BY ALL",
]


def _answers(root: Root) -> list[list[tuple]]:
    return root.queries(QUERIES)


def _raw_rows(root: Root) -> int:
    """Rows in the Parquet files themselves, as plain DuckDB over the glob sees them."""
    glob = root.store.uri(f"{GENERATIONS_PREFIX}/**/*.parquet")
    con = duckdb.connect()
    if root.settings.is_s3:
        from ideogram_pipeline.storage.duckdb_s3 import configure_duckdb_s3

        configure_duckdb_s3(con, root.settings)
    try:
        return con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("kind", KINDS)
def test_compaction_keeps_every_answer_and_reduces_files(
    kind: str, tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root(kind, tmp_path, simulator, request)
    for number in range(2):  # two runs of one batch: two small files in one partition
        root.batch("posters", [(f"A poster, version {number}", ""), ("A shared row", "")])
    root.batch("single", [("A lone file", "")])
    before = _answers(root)
    assert count_files(root.store)[0] == 3
    rows, merged_rows = _raw_rows(root), len(root.ids("batch = 'posters'"))

    seen_mid_way: list[tuple[int, list[list[tuple]]]] = []

    def in_between(_key: str, inputs: list[str]) -> None:
        # The merged file is written and its inputs not yet deleted: every row is on disk
        # twice, and the history views still answer exactly as before.
        seen_mid_way.append((_raw_rows(root), _answers(root)))

    result = compact(root.store, target_bytes=10 * 1024 * 1024, on_written=in_between)
    assert len(seen_mid_way) == 1
    raw, answers = seen_mid_way[0]
    assert raw == rows + merged_rows and answers == before
    assert _answers(root) == before
    assert (result.files_before, count_files(root.store)[0]) == (3, 2)
    assert _raw_rows(root) == rows

    # A target smaller than any file leaves everything as it is.
    again = compact(root.store, target_bytes=1)
    assert again.files_before == again.files_after and _answers(root) == before


def test_compaction_killed_after_writing_is_finished_by_the_next_run(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root("local", tmp_path, simulator, request)
    for number in range(3):
        root.batch("crash", [(f"A crash poster {number}", "")])
    before = _answers(root)
    killed = run_cli(
        root, ["compact"], {"IDEOGRAM_LIFECYCLE_CRASH_AT": "compaction-written"}, child=True
    )
    assert killed.returncode == -9
    assert count_files(root.store)[0] == 4 and _answers(root) == before  # duplicates hidden
    done = run_cli(root, ["compact"])
    assert done.returncode == 0 and "files: 4 -> 1" in done.stdout, done.stdout
    assert _raw_rows(root) == 3 and _answers(root) == before


@pytest.mark.parametrize("kind", KINDS)
def test_one_metadata_rewriting_job_at_a_time(
    kind: str, tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root(kind, tmp_path, simulator, request)
    with LifecycleLock(root.store, "cleanup"):
        with pytest.raises(LifecycleBusy, match="cleanup"):
            compact(root.store)
        busy = run_cli(root, ["compact"])
        assert busy.returncode != 0 and "holds" in busy.stderr
    assert compact(root.store).files_before == 0  # released: the next job runs

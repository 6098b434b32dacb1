"""``migrate``: a history written by the previous release's own code, into the Delta tables.

The fixture ``tests/data/legacy-history/`` was written by release 2314ac4 itself (see
``tests/data/make_legacy_history.py``), and ``legacy-history.json`` holds that release's
own answers (its views, its pin log): the migrated tables must give the same answers.
Everything is real: DuckDB, Delta on local disk and on SeaweedFS, the CLI in subprocesses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.history.legacy import LEGACY_PREFIXES, list_legacy
from ideogram_pipeline.history.migrate import MigrationError, MigrationResult, migrate
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, USAGE, HistoryTables
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.storage import ObjectStore, open_store
from tests.conftest import make_env

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "legacy-history"
EXPECTED: dict[str, Any] = json.loads((DATA / "legacy-history.json").read_text())
TABLES = (RECORDS, GENERATIONS, USAGE)


def local_root(tmp_path: Path) -> tuple[Settings, ObjectStore]:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root)
    settings = load_settings({"IDEOGRAM_STORAGE": str(root)})
    return settings, open_store(settings)


def upload(store: ObjectStore, folder: Path) -> None:
    """Every file under ``folder`` into ``store`` under the same relative key."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.put_bytes(path.relative_to(folder).as_posix(), path.read_bytes())


@pytest.fixture(params=["local", "s3"])
def legacy_root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Settings, ObjectStore]:
    """The fixture history in a fresh local folder or SeaweedFS bucket."""
    if request.param == "local":
        return local_root(tmp_path)
    settings = request.getfixturevalue("s3_settings")
    store = open_store(settings)
    upload(store, FIXTURE)
    return settings, store


class History:
    """One ``history.connect`` connection for a test's queries (its views read each table's
    newest version at every query, so one connection sees every later commit)."""

    def __init__(self, settings: Settings) -> None:
        self.con = history.connect(settings, views=TABLES)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.con.execute(sql).fetchall()

    def per_batch(self, view: str) -> dict[str, dict[str, Any]]:
        found = self.rows(
            f"SELECT batch, count(*), round(sum(coalesce(cost_usd, 0)), 6) FROM {view} "
            "GROUP BY batch ORDER BY batch"
        )
        return {batch: {"records": n, "cost_usd": cost} for batch, n, cost in found}


@pytest.fixture
def opened() -> Iterator[Callable[[Settings], History]]:
    """Opens :class:`History` connections and closes them after the test."""
    connections: list[History] = []

    def open_history(settings: Settings) -> History:
        connections.append(History(settings))
        return connections[-1]

    yield open_history
    for item in connections:
        item.con.close()


def versions(settings: Settings) -> dict[str, int]:
    tables = HistoryTables(settings)
    return {name: int(tables.table(name).version()) for name in TABLES if tables.exists(name)}


def legacy_keys(store: ObjectStore) -> list[str]:
    return sorted(info.key for prefix in LEGACY_PREFIXES for info in store.list(prefix + "/"))


def outcome_figures(result: MigrationResult) -> dict[str, dict[str, Any]]:
    return {
        b.batch: {"records": b.records.rows, "cost_usd": round(b.records.cost_usd, 6)}
        for b in result.batches
    }


@pytest.mark.slow
def test_migration_reproduces_the_old_release_answers(
    legacy_root: tuple[Settings, ObjectStore], opened: Callable[[Settings], History]
) -> None:
    settings, store = legacy_root
    with pytest.raises(history.HistoryNeedsMigration, match="migrate"):
        history.connect(settings, store)
    before = legacy_keys(store)
    result = migrate(settings, store)
    assert {b.state for b in result.batches} == {"migrated"}
    assert outcome_figures(result) == EXPECTED["generation_records"]
    h = opened(settings)

    # Counts and cost sums per batch, as the old views answered them.
    assert h.per_batch("generation_records") == EXPECTED["generation_records"]
    assert h.per_batch("generations") == EXPECTED["generations"]
    current = h.rows('SELECT id, batch, "row", image_index, status FROM generations ORDER BY ALL')
    assert [
        dict(zip(["id", "batch", "row", "image_index", "status"], r, strict=True)) for r in current
    ] == (EXPECTED["current"])
    # Exactly one current row per row key; the re-run row shows once, as stored, and its
    # failed first attempt stays in the audit trail.
    (duplicates,) = h.rows(
        'SELECT count(*) - count(DISTINCT (batch, "row", image_index)) FROM generations',
    )[0]
    assert duplicates == 0
    statuses = h.rows(
        "SELECT list(status ORDER BY created_at) FROM generation_records "
        "WHERE batch = 'landscapes' AND \"row\" = 2",
    )
    assert statuses == [(["failed", "stored"],)]

    # Tags from the tag log, pins from the pin log, as the old release merged them.
    tags = dict(h.rows("SELECT id, tags FROM generation_records"))
    assert tags == {r["id"]: r["tags"] for r in EXPECTED["records"]}
    assert tags[EXPECTED["ids"]["forest"]] == ["landscape", "favourite"]
    pinned = [i for (i,) in h.rows("SELECT id FROM generations WHERE pinned")]
    assert pinned == EXPECTED["pinned"] == [EXPECTED["ids"]["castle"]]
    (events,) = h.rows(
        "SELECT list(DISTINCT event), bool_and(recorded_at = created_at) FROM generation_records",
    )
    assert events == (["generate"], True)
    usage = h.rows("SELECT batch, id, cost_usd FROM usage_rollup ORDER BY ALL")
    assert [dict(zip(["batch", "id", "cost_usd"], r, strict=True)) for r in usage] == EXPECTED[
        "usage_rollup"
    ]
    assert legacy_keys(store) == before  # the old files stay until --remove-old

    # A second run changes nothing: no new table version, every batch already migrated.
    committed = versions(settings)
    again = migrate(settings, store)
    assert {b.state for b in again.batches} == {"already migrated"}
    assert outcome_figures(again) == EXPECTED["generation_records"]
    assert versions(settings) == committed
    # Without the markers too: every row is found in the tables and nothing is committed.
    store.delete([info.key for info in store.list("history/_migrated/")])
    third = migrate(settings, store)
    assert {b.state for b in third.batches} == {"migrated"}
    assert [b.inserted for b in third.batches] == [{}] * 4
    assert versions(settings) == committed

    # --remove-old deletes the old layout (the cleanup audit stays) and nothing else.
    removed = migrate(settings, store, remove_old=True)
    assert removed.removed == len(before)
    assert legacy_keys(store) == []
    assert (
        [i.key for i in store.list("metadata/")]
        == [i.key for i in store.list("metadata/audit/")]
        != []
    )
    assert versions(settings) == committed
    assert h.per_batch("generations") == EXPECTED["generations"]
    assert not migrate(settings, store).found_legacy


def test_dry_run_reports_and_writes_nothing(tmp_path: Path) -> None:
    settings, store = local_root(tmp_path)
    # A cleanup of the old release that died before its done.json: reported, not resumed.
    store.put_bytes("metadata/lifecycle/cleanup/20260101T000000Z-dead/manifest.json", b"{}")
    result = migrate(settings, store, dry_run=True)
    assert result.pending_cleanups == ["20260101T000000Z-dead"]
    assert {b.state for b in result.batches} == {"dry run"}
    assert outcome_figures(result) == EXPECTED["generation_records"]
    landscapes = next(b for b in result.batches if b.batch == "landscapes")
    assert landscapes.inserted == {RECORDS: 6, GENERATIONS: 5}
    assert not list(store.list("history/"))


def test_files_missing_optional_columns(
    tmp_path: Path, opened: Callable[[Settings], History]
) -> None:
    """Files with only the documented columns (no attempt_id: the current row is the newest
    record), an unknown column, a roll-up with a few columns, a row in two files."""
    settings, store = local_root(tmp_path)
    root = Path(store.root)
    documented = EXPECTED["documented_columns"]
    files = sorted(root.glob("metadata/generations/*/*/*.parquet"))
    for number, path in enumerate(files):
        table = pq.read_table(path, partitioning=None).select(documented)
        if number == 0:  # a future release's column, unknown here: ignored
            table = table.append_column("future_column", table.column("id"))
        pq.write_table(table, path)
    # An interrupted compaction of the old release left a partition's rows in two files.
    shutil.copy(files[0], files[0].with_name("compacted-copy.parquet"))
    for path in root.glob("metadata/usage_rollup/*/*/*.parquet"):
        table = pq.read_table(path, partitioning=None)
        pq.write_table(table.select(["id", "created_at", "cost_usd"]), path)

    result = migrate(settings, store)
    assert outcome_figures(result) == EXPECTED["generation_records"]
    h = opened(settings)
    assert h.per_batch("generation_records") == EXPECTED["generation_records"]
    assert h.per_batch("generations") == EXPECTED["generations"]
    assert h.rows("SELECT count(attempt_id), count(request_hash) FROM generations") == [(0, 0)]
    assert h.rows(
        "SELECT status FROM generations WHERE batch = 'landscapes' AND \"row\" = 2",
    ) == [("stored",)]
    tags = dict(h.rows("SELECT id, tags FROM generations"))
    assert tags[EXPECTED["ids"]["fisherman"]] == ["people", "favourite"]
    usage = h.rows("SELECT batch, id, cost_usd, model FROM usage_rollup")
    assert [(b, i, c) for b, i, c, _ in usage] == [
        (r["batch"], r["id"], r["cost_usd"]) for r in EXPECTED["usage_rollup"]
    ]
    assert usage[0][3] is None


def test_a_record_without_an_id_is_refused_naming_its_batch(tmp_path: Path) -> None:
    settings, store = local_root(tmp_path)
    root = Path(store.root)
    source = next(root.glob("metadata/generations/*/batch=portraits/*.parquet"))
    target = source.parent.parent / "batch=anonymous" / "other-tool.parquet"
    target.parent.mkdir()
    table = pq.read_table(source, partitioning=None)
    pq.write_table(table.drop_columns(["id"]), target)
    with pytest.raises(MigrationError, match=r"batch anonymous: .*other-tool\.parquet"):
        migrate(settings, store)
    assert list_legacy(store).batches == [
        "anonymous",
        "drafts",
        "external",
        "landscapes",
        "portraits",
    ]


def test_a_table_that_differs_from_the_old_files_fails_verification(tmp_path: Path) -> None:
    """The tables disagree with the old files (a cost changed since): the batch is named,
    the command fails and --remove-old deletes nothing."""
    settings, store = local_root(tmp_path)
    migrate(settings, store)
    tables = HistoryTables(settings)
    forest = EXPECTED["ids"]["forest"]
    tables.table(RECORDS).update(predicate=f"id = '{forest}'", updates={"cost_usd": "1.5"})
    store.delete(["history/_migrated/landscapes.json"])  # as if never verified
    before = legacy_keys(store)
    with pytest.raises(
        MigrationError, match="batch landscapes: verification failed for generation_records"
    ):
        migrate(settings, store, remove_old=True)
    assert legacy_keys(store) == before


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from ideogram_pipeline.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=300,
    )


@pytest.mark.slow
def test_commands_send_an_unmigrated_root_to_migrate(tmp_path: Path) -> None:
    _, store = local_root(tmp_path)
    env = make_env(storage=store.root, DAGSTER_HOME=str(tmp_path / "dagster"))
    csv = tmp_path / "fox.csv"
    csv.write_text('prompt\n"A red fox in the snow"\n')

    for args in (("query", "SELECT count(*) FROM generations"), ("run", str(csv))):
        done = cli(env, tmp_path, *args)
        assert done.returncode != 0, args
        assert "ideogram-pipeline migrate" in done.stderr.splitlines()[-1], done.stderr
    assert not list(store.list("history/")) and not list(store.list("images/"))

    dry = cli(env, tmp_path, "migrate", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "batch landscapes: 6 records ($0.15), 5 current rows ($0.15): would import" in (
        dry.stdout
    )
    assert "DRY RUN" in dry.stdout and not list(store.list("history/"))

    done = cli(env, tmp_path, "migrate")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [
        f"batch {b}" for b in sorted(EXPECTED["generation_records"])
    ]
    assert all(line.endswith("verified") for line in lines[:4])
    assert "migrated 4 batches (0 already migrated): 10 records in" in lines[4]
    assert "records/s" in lines[4]
    query = ("query", "SELECT count(*) AS n FROM generations", "--format", "csv")
    assert cli(env, tmp_path, *query).stdout.split() == ["n", "9"]

    # A run that did not finish (here: its completion marker lost) is no history to show.
    marker = Path(store.root) / "history" / "_migrated.json"
    marker.rename(marker.with_suffix(".bak"))
    partial = cli(env, tmp_path, *query)
    assert partial.returncode != 0 and "not completely" in partial.stderr, partial.stderr
    marker.with_suffix(".bak").rename(marker)

    again = cli(env, tmp_path, "migrate", "--remove-old")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already migrated") == 5  # 4 batches and the summary
    old = [p for p in FIXTURE.rglob("*") if p.is_file() and "audit" not in p.parts]
    assert f"removed {len(old)} old files" in again.stdout

    count = cli(env, tmp_path, "query", "SELECT count(*) AS n FROM generations", "--format", "csv")
    assert count.returncode == 0, count.stderr
    assert count.stdout.split() == ["n", "9"]

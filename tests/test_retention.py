"""Retention cleanup, pins and crash recovery on local and S3 roots.

Nothing is faked: real batches against the bundled simulator write the Delta tables,
SeaweedFS serves S3, DuckDB reads them, the CLI runs for real, and a cleanup is killed with
SIGKILL in a child process at an exact step. Age comes from ``--as-of``: a record is "old"
because the cleanup is told to judge it from a later moment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ideogram_pipeline.history.pins import set_pinned
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, USAGE
from ideogram_pipeline.lifecycle.policy import RetentionPolicy
from ideogram_pipeline.lifecycle.retention import AUDIT_PREFIX, run_cleanup
from ideogram_pipeline.simulator.server import Simulator
from tests.lifecycle_support import Root, cleanup_killed_at, make_root, run_cli, simulator_running

KINDS = ["local", pytest.param("s3", marks=pytest.mark.s3)]

OLD_ROWS = [
    ("A red fox in fresh snow", ""),  # stored: goes
    ("Two paper boats [sim:unsafe]", ""),  # unsafe: goes (no object)
    ("A crowded market [sim:422]", ""),  # failed: goes
    ("An owl on a fence post", "keep"),  # keep tag: stays
    ("A cat asleep on a piano", ""),  # pinned: stays
]
NEW_ROWS = [("A lighthouse at dawn", ""), ("A tram at night", "")]


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with simulator_running() as sim:
        yield sim


def _consistent(root: Root) -> None:
    """Objects and records agree, both tables hold the same ids, and every data file the
    tables' current versions read is in storage."""
    stored, records, current = root.queries(
        [
            "SELECT DISTINCT image_key FROM generation_records WHERE status = 'stored'",
            "SELECT DISTINCT id FROM generation_records",
            "SELECT id FROM generations",
        ]
    )
    assert root.image_keys() == {k for (k,) in stored}
    assert sorted(records) == sorted(current)
    for name in (GENERATIONS, RECORDS):
        referenced, stored = root.data_files(name)
        assert referenced <= stored, name


def _audits(root: Root) -> list[dict]:
    keys = sorted(k for k in root.objects(AUDIT_PREFIX + "/") if k.endswith(".json"))
    return [json.loads(root.store.get_bytes(key)) for key in keys]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_old_records_go_recent_and_protected_stay(
    kind: str, tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root(kind, tmp_path, simulator, request)
    root.batch("old", OLD_ROWS)
    boundary = datetime.now(UTC)
    root.batch("new", NEW_ROWS)
    (cat,) = root.ids("prompt LIKE 'A cat%'")
    pinned = run_cli(root, ["pin", cat])
    assert pinned.returncode == 0 and "pinned" in pinned.stdout
    assert run_cli(root, ["pin", "no-such-id"]).returncode != 0
    expired = root.ids("batch = 'old' AND NOT list_contains(tags, 'keep')") - {cat}

    as_of = (boundary + timedelta(days=30)).isoformat()
    before = root.objects()
    dry = run_cli(root, ["cleanup", "--older-than", "30", "--as-of", as_of, "--dry-run"])
    assert dry.returncode == 0, dry.stderr
    fox_size = root.query("SELECT size_bytes FROM generations WHERE prompt LIKE 'A red fox%'")
    assert "would delete 3 records (1 images" in dry.stdout
    assert f"{fox_size[0][0]} bytes" in dry.stdout
    assert "oldest 20" in dry.stdout and "newest 20" in dry.stdout
    assert root.objects() == before  # a dry run writes nothing at all

    real = run_cli(root, ["cleanup", "--older-than", "30", "--as-of", as_of])
    assert real.returncode == 0, real.stderr
    assert "deleted 3 records" in real.stdout and "audit:" in real.stdout
    prompts = sorted(p for (p,) in root.query("SELECT prompt FROM generations"))
    assert prompts == sorted([OLD_ROWS[3][0], OLD_ROWS[4][0], *(r[0] for r in NEW_ROWS)])
    assert not (expired & root.ids())  # gone from the audit trail too, not only the state
    _consistent(root)
    (audit,) = _audits(root)
    assert audit["records"] == 3 and audit["objects"] == 1 and audit["policy"]["default_days"]
    rolled = root.rollup()
    assert {i for i, _ in rolled} == expired
    assert {c for _, c in rolled} == {audit["cleanup_id"]}

    # Unpinned, the cat goes on the next run; the keep tag still protects the owl.
    set_pinned(root.settings, [cat], False)
    policy = RetentionPolicy(default_days=30)
    moment = boundary + timedelta(days=30)
    assert run_cleanup(root.settings, root.store, policy, moment).plan.count == 1
    assert cat not in root.ids()
    _consistent(root)

    # Replaced files stay for an hour (a reader may be on the version before the DELETE).
    files = {name: root.data_files(name) for name in (GENERATIONS, RECORDS)}
    assert any(referenced < stored for referenced, stored in files.values())

    # A year on, every unprotected record has gone; "new" is emptied as a whole partition.
    # With no one else reading, the vacuum may remove the replaced files at once.
    year = boundary + timedelta(days=365)
    last = run_cleanup(root.settings, root.store, policy, year, vacuum_hours=0)
    assert last.plan.whole_partitions == 1 and last.plan.count == len(NEW_ROWS)
    assert [p for (p,) in root.query("SELECT prompt FROM generations")] == [OLD_ROWS[3][0]]
    for name in (GENERATIONS, RECORDS):
        referenced, stored = root.data_files(name)
        assert referenced == stored  # vacuumed
        assert not [f for f in stored if "batch=new" in f]
    # The deleted prompts are in no file under the root any more, only the kept one is.
    everything = root.store.uri("history/*/**/*.parquet")
    (found,) = root.query(
        f"SELECT list(DISTINCT prompt) FILTER (prompt IS NOT NULL) FROM "
        f"read_parquet('{everything}', union_by_name = true)"
    )[0]
    assert found == [OLD_ROWS[3][0]]
    _consistent(root)
    assert len(root.rollup()) == 3 + 1 + len(NEW_ROWS)


@pytest.mark.slow
def test_per_tag_retention_from_config(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    config = "[retention]\ndefault_days = 30\n[retention.tags]\ndraft = 7\ncampaign = 90\n"
    root = make_root("local", tmp_path, simulator, request, retention=config)
    root.batch(
        "tags",
        [
            ("A draft poster", "draft"),
            ("A final poster", ""),
            ("A campaign draft", "draft|campaign"),
            ("A rescued draft", "draft"),
        ],
    )
    # A keep tag added after the fact: an UPDATE of `generations` and an appended record.
    (rescued,) = root.ids("prompt = 'A rescued draft'")
    assert run_cli(root, ["tag", rescued, "--add", "keep"]).returncode == 0
    (draft,) = root.ids("prompt = 'A draft poster'")
    assert run_cli(root, ["pin", draft]).returncode == 0
    assert "unpinned" in run_cli(root, ["unpin", draft]).stdout
    assert "was already not pinned" in run_cli(root, ["unpin", draft]).stdout
    ten_days = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    result = run_cli(root, ["cleanup", "--as-of", ten_days])  # policy from IDEOGRAM_RETENTION
    assert result.returncode == 0, result.stderr
    assert "draft 7 days" in result.stdout and "deleted 1 records" in result.stdout
    left = sorted(p for (p,) in root.query("SELECT prompt FROM generations"))
    # The longest matching tag wins (campaign 90 over draft 7); keep wins over all.
    assert left == ["A campaign draft", "A final poster", "A rescued draft"]
    # The draft's pin and unpin records went with it: one roll-up row, once.
    assert [i for i, _ in root.rollup()] == [draft]
    _consistent(root)


@pytest.mark.slow
def test_a_superseded_record_goes_by_its_own_tags(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    """A row that failed and was changed in the file has an old record that is no longer
    the file's (issue 17: it stays in `generations_all`, ``in_file`` false): it expires by
    the tags it was recorded with, and the file's row stays with its own."""
    root = make_root("local", tmp_path, simulator, request)
    root.batch("retry", [("A flaky poster [sim:422]", "")])
    (old,) = root.ids()
    root.batch("retry", [("A flaky poster", "keep")])
    assert len(root.ids()) == 2 and old not in root.current_ids("in_file")
    later = datetime.now(UTC) + timedelta(days=31)
    result = run_cleanup(root.settings, root.store, RetentionPolicy(default_days=30), later)
    assert result.plan.ids == [old]
    assert root.ids() == root.current_ids() and len(root.ids()) == 1
    _consistent(root)


def _crash_root(
    kind: str, tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> Root:
    root = make_root(kind, tmp_path, simulator, request)
    root.batch("a", [(f"A crash test image number {n}", "") for n in range(6)])
    root.batch("b", [("A survivor", "keep"), ("A casualty", "")])
    (tagged,) = root.ids("prompt = 'A crash test image number 0'")
    assert run_cli(root, ["tag", tagged, "--add", "spare"]).returncode == 0  # 2 records
    return root


@pytest.mark.parametrize(
    ("kind", "phase"),
    # Between the objects and the rows (the brief's case), between the two DELETEs, and
    # after the last commit but before the audit.
    [("local", p) for p in ("objects-deleted", "generations-deleted", "vacuumed")]
    + [pytest.param("s3", "objects-deleted", marks=pytest.mark.s3)],
)
@pytest.mark.slow
def test_cleanup_killed_after_any_step_is_finished_by_the_next_run(
    kind: str, phase: str, tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = _crash_root(kind, tmp_path, simulator, request)
    keep = root.ids("list_contains(tags, 'keep')")
    expired = root.ids() - keep
    as_of = (datetime.now(UTC) + timedelta(days=31)).isoformat()

    cleanup_killed_at(root, phase, as_of)  # SIGKILL: no cleanup code ran after `phase`
    # Each commit is whole: a table holds all of an expired id's rows or none.
    every = keep | expired
    current, recorded = {
        "rolled-up": (every, every),
        "objects-deleted": (every, every),
        "generations-deleted": (keep, every),
    }.get(phase, (keep, keep))
    assert (root.current_ids(), root.ids()) == (current, recorded)
    if phase == "objects-deleted":
        assert root.image_keys() < root.stored_keys()  # records whose images are gone

    again = run_cli(root, ["cleanup", "--as-of", as_of])
    assert again.returncode == 0, again.stderr
    assert root.ids() == keep
    _consistent(root)
    # The roll-up holds each deleted record exactly once, however often it was written.
    assert sorted(i for i, _ in root.rollup()) == sorted(expired)
    # Every deleted record is in exactly one audit (a run killed after its last DELETE
    # gets its audit written by the next run, from the roll-up).
    counted = sum(a["records"] for a in _audits(root))
    assert counted == len(expired)


def test_a_pin_that_lands_during_a_cleanup_is_not_undone(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    """The DELETE of `generations` re-checks pins on the version it commits against."""
    root = make_root("local", tmp_path, simulator, request)
    root.batch("race", [("A kite", ""), ("A yo-yo", "")])
    (kite,) = root.ids("prompt = 'A kite'")
    (kite_key,) = root.query("SELECT image_key FROM generations WHERE id = ?", [kite])[0]
    later = datetime.now(UTC) + timedelta(days=31)

    def pin_meanwhile(phase: str) -> None:
        if phase == "rolled-up":
            set_pinned(root.settings, [kite], True)

    result = run_cleanup(
        root.settings, root.store, RetentionPolicy(default_days=30), later, on_phase=pin_meanwhile
    )
    assert result.plan.count == 2 and result.kept_meanwhile == [kite]
    assert root.current_ids() == root.ids() == {kite}
    assert root.query("SELECT pinned FROM generations") == [(True,)]
    # The kite's image went with the plan's objects; the orphan sweep will mark it.
    assert kite_key not in root.image_keys()
    assert _audits(root)[0]["kept_meanwhile"] == [kite]


def test_cleanup_api_is_idempotent_and_audits_empty_runs(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root("local", tmp_path, simulator, request)
    policy = RetentionPolicy(default_days=1)
    now = datetime.now(UTC)
    dry = run_cleanup(root.settings, root.store, policy, now, dry_run=True)
    assert dry.plan.count == 0 and not root.objects("history/")  # no table is created
    root.batch("x", [("A quiet pond", "")])
    nothing = run_cleanup(root.settings, root.store, policy, now)
    assert nothing.plan.count == 0 and nothing.audit_key  # an empty run is audited too
    first = run_cleanup(root.settings, root.store, policy, now + timedelta(days=2))
    second = run_cleanup(root.settings, root.store, policy, now + timedelta(days=2))
    assert (first.plan.count, second.plan.count) == (1, 0)
    assert not root.ids() and len(root.rollup()) == 1
    referenced, stored = root.data_files(USAGE)
    assert referenced and referenced <= stored
    _consistent(root)


def test_cleanup_rejects_bad_input(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root("local", tmp_path, simulator, request)
    bad_date = run_cli(root, ["cleanup", "--as-of", "next tuesday", "--dry-run"])
    assert bad_date.returncode != 0 and "--as-of" in bad_date.stderr
    fix_alone = run_cli(root, ["cleanup", "--fix"])
    assert fix_alone.returncode != 0 and "--orphans" in fix_alone.stderr
    (tmp_path / "broken.toml").write_text("[retention]\ndefault_days = 'soon'\n")
    broken = run_cli(
        root, ["cleanup", "--dry-run"], {"IDEOGRAM_RETENTION": str(tmp_path / "broken.toml")}
    )
    assert broken.returncode != 0 and "default_days" in broken.stderr


def test_an_image_shared_with_a_record_that_stays_is_kept(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    """A linked duplicate (same seeded request in a later batch) points at the original's
    image; when only the original expires, its image must stay for the duplicate."""
    root = make_root("local", tmp_path, simulator, request)
    root.batch("first", [("A brass compass on a map", "7")], header="prompt,seed")
    boundary = datetime.now(UTC)
    later = root.batch("second", [("A brass compass on a map", "7")], header="prompt,seed")
    assert later.linked == 1  # not paid again: linked to the first batch's image
    (shared,) = {k for (k,) in root.query("SELECT image_key FROM generations")}

    result = run_cleanup(
        root.settings, root.store, RetentionPolicy(default_days=30), boundary + timedelta(days=30)
    )
    assert result.plan.count == 1  # only the original record expired
    assert root.query("SELECT batch, image_key FROM generations") == [("second", shared)]
    assert shared in root.image_keys()  # the duplicate's image survived


def test_a_config_that_still_sets_schedules_is_refused_by_name(tmp_path: Path) -> None:
    """The crons left retention.toml (definitions read no file): an old file that still has
    them must say so, not silently move the user's cleanup to the default hour."""
    from ideogram_pipeline.lifecycle.policy import LifecycleError, load_lifecycle_config

    config = tmp_path / "retention.toml"
    config.write_text('[retention]\ndefault_days = 5\n[schedules]\ncleanup = "0 1 * * *"\n')
    with pytest.raises(LifecycleError, match=r"\[schedules\].*IDEOGRAM_CLEANUP_CRON"):
        load_lifecycle_config({}, config)
    config.write_text("[retention]\ndefault_days = 5\n")
    assert load_lifecycle_config({}, config).retention.default_days == 5

"""Retention cleanup, pins and crash recovery on local and S3 roots.

Nothing is faked: real batches against the bundled simulator write the history, SeaweedFS
serves S3, DuckDB reads it, the CLI runs for real (in a child process where it must be
killed). Age comes from ``--as-of``: a record is "old" because the cleanup is told to judge
it from a later moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ideogram_pipeline import history
from ideogram_pipeline.ideogram.simulator import Simulator
from ideogram_pipeline.lifecycle import RetentionPolicy
from ideogram_pipeline.pins import record_pin
from ideogram_pipeline.retention import USAGE_PREFIX, pending_cleanups, run_cleanup
from tests.lifecycle_support import Root, make_root, run_cli, simulator_running

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
    """Objects and rows agree: every stored row has its object, every image has a row."""
    assert root.image_keys() == root.stored_keys()
    assert not pending_cleanups(root.store)


@pytest.mark.parametrize("kind", KINDS)
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
    _consistent(root)
    audits = [k for k in root.objects("metadata/audit/cleanup/") if k.endswith(".json")]
    assert len(audits) == 1
    rolled = [k for k in root.objects(USAGE_PREFIX + "/") if k.endswith(".parquet")]
    assert rolled and all("batch=old" in k for k in rolled)

    # Unpinned, the cat goes on the next run; the keep tag still protects the owl.
    record_pin(root.store, cat, "unpin")
    policy = RetentionPolicy(default_days=30)
    moment = boundary + timedelta(days=30)
    assert run_cleanup(root.settings, root.store, policy, moment).plan.count == 1
    assert cat not in root.ids()
    _consistent(root)

    # A year on, every unprotected record has gone; "new" is dropped as a whole partition.
    last = run_cleanup(root.settings, root.store, policy, boundary + timedelta(days=365))
    assert last.plan.whole_partitions == 1 and last.plan.count == len(NEW_ROWS)
    assert [p for (p,) in root.query("SELECT prompt FROM generations")] == [OLD_ROWS[3][0]]
    assert not [k for k in root.objects("metadata/generations/") if "batch=new" in k]
    _consistent(root)


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
    # A keep tag added after the fact (the tag-change log, merged by the history views).
    (rescued,) = root.ids("prompt = 'A rescued draft'")
    assert run_cli(root, ["tag", rescued, "--add", "keep"]).returncode == 0
    (draft,) = root.ids("prompt = 'A draft poster'")
    assert run_cli(root, ["pin", draft]).returncode == 0
    assert "unpinned" in run_cli(root, ["unpin", draft]).stdout
    assert "was already not pinned" in run_cli(root, ["unpin", draft]).stdout
    ten_days = (datetime.now(UTC) + timedelta(days=10)).isoformat()
    result = run_cli(root, ["cleanup", "--as-of", ten_days])  # policy from IDEOGRAM_RETENTION
    assert result.returncode == 0, result.stderr
    assert "draft 7 days" in result.stdout
    left = sorted(p for (p,) in root.query("SELECT prompt FROM generations"))
    # The longest matching tag wins (campaign 90 over draft 7); keep wins over all.
    assert left == ["A campaign draft", "A final poster", "A rescued draft"]
    _consistent(root)


# A crash after the manifest, half-way through the object deletions, and after the first
# partition was rewritten: before any change, with rows pointing at deleted objects, and
# with the metadata half rewritten.
CRASH_POINTS = ["after-manifest", "mid-objects", "mid-partitions"]


@pytest.mark.parametrize(
    ("kind", "point"),
    [("local", p) for p in CRASH_POINTS]
    + [pytest.param("s3", "mid-objects", marks=pytest.mark.s3)],
)
def test_cleanup_killed_midway_is_repaired_by_the_next_run(
    kind: str, point: str, tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root(kind, tmp_path, simulator, request)
    root.batch("a", [(f"A crash test image number {n}", "") for n in range(6)])
    root.batch("b", [("A survivor", "keep"), ("A casualty", "")])
    expired = root.ids("NOT list_contains(tags, 'keep')")
    as_of = (datetime.now(UTC) + timedelta(days=31)).isoformat()

    killed = run_cli(
        root, ["cleanup", "--as-of", as_of], {"IDEOGRAM_LIFECYCLE_CRASH_AT": point}, child=True
    )
    assert killed.returncode == -9, (killed.stdout, killed.stderr)  # SIGKILL: no cleanup code ran
    assert pending_cleanups(root.store)  # the manifest says what is left to do

    again = run_cli(root, ["cleanup", "--as-of", as_of])
    assert again.returncode == 0, again.stderr
    assert "finished interrupted cleanup" in again.stdout
    assert root.ids() == {
        i for (i,) in root.query("SELECT id FROM generations WHERE list_contains(tags, 'keep')")
    }
    assert not (expired & root.ids())
    _consistent(root)
    # The roll-up holds each deleted record exactly once, however often it was written.
    rollup = root.store.uri(f"{USAGE_PREFIX}/**/*.parquet")
    con = history.connect(root.settings, root.store)
    try:
        rows = con.execute(f"SELECT id FROM read_parquet('{rollup}')").fetchall()
    finally:
        con.close()
    assert sorted(r[0] for r in rows) == sorted(expired)


def test_cleanup_api_is_idempotent_and_audits_empty_runs(
    tmp_path: Path, simulator: Simulator, request: pytest.FixtureRequest
) -> None:
    root = make_root("local", tmp_path, simulator, request)
    root.batch("x", [("A quiet pond", "")])
    policy = RetentionPolicy(default_days=1)
    now = datetime.now(UTC)
    nothing = run_cleanup(root.settings, root.store, policy, now)
    assert nothing.plan.count == 0 and nothing.audit_key  # an empty run is audited too
    first = run_cleanup(root.settings, root.store, policy, now + timedelta(days=2))
    second = run_cleanup(root.settings, root.store, policy, now + timedelta(days=2))
    assert (first.plan.count, second.plan.count) == (1, 0)
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

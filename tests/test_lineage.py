"""Lineage, descriptions, retention of derived images and cost by operation (issue 19).

Nothing is faked: records with ``operation`` and ``derived_from`` are written into real
Delta tables under a local root (as the engine's flush writes them), their images are real
objects in the local store, DuckDB reads them, retention runs for real, and the CLI
commands run through click's runner against that root.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.descriptions import set_description
from ideogram_pipeline.history.lineage import lineage
from ideogram_pipeline.history.pins import set_pinned
from ideogram_pipeline.history.record_ids import RecordIdError
from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.search import SearchFilters, search
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.lifecycle.policy import RetentionPolicy
from ideogram_pipeline.lifecycle.retention import run_cleanup
from ideogram_pipeline.reports.rendering import figure_rows
from ideogram_pipeline.reports.usage import build_report
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage.keys import image_key
from ideogram_pipeline.storage.local import LocalStore

OLD = datetime(2024, 1, 2, 12, tzinfo=UTC)
YOUNG = datetime(2024, 6, 1, 12, tzinfo=UTC)
AS_OF = datetime(2024, 6, 10, tzinfo=UTC)
POLICY = RetentionPolicy(default_days=30)
PNG = b"\x89PNG\r\n\x1a\n"  # the store does not look inside: any bytes stand for an image


def _id(name: str) -> str:
    """A hex record id (what the engine makes) that reads as its name in the tests."""
    return hashlib.sha256(name.encode()).hexdigest()[:24]


class Family:
    """A local root whose records are written straight into the history tables."""

    def __init__(self, root: Path) -> None:
        self.settings = Settings(storage=str(root))
        self.store = LocalStore(str(root))
        self.tables = HistoryTables(self.settings)
        self.rows = 0

    def add(
        self,
        name: str,
        created: datetime,
        *,
        operation: str | None = None,
        source: str | None = None,
        cost: float = 0.03,
        prompt: str | None = None,
        batch: str = "family",
    ) -> str:
        record_id = _id(name)
        key = image_key(record_id, created.date().isoformat())
        data = PNG + name.encode()
        self.store.put_bytes(key, data, content_type="image/png")
        self.rows += 1
        record = GenerationRecord(
            id=record_id,
            row=self.rows,
            image_index=0,
            prompt=prompt or f"picture {name}",
            model="V_3",
            status="stored",
            stored_uri=self.store.uri(key),
            image_key=key,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            created_at=created,
            cost_usd=cost,
            run_id="r1",
            attempt_id=f"{created:%Y%m%d}-{name}",
            operation=operation,
            derived_from=_id(source) if source else None,
            date=created.date(),
            batch=batch,
        )
        self.tables.write(batch, [record])
        return record_id

    def ids(self) -> set[str]:
        con = history.connect(self.settings, self.store)
        try:
            return {i for (i,) in con.execute("SELECT id FROM generations").fetchall()}
        finally:
            con.close()


@pytest.fixture
def family(tmp_path: Path) -> Family:
    return Family(tmp_path / "root")


def test_lineage_follows_derived_from_both_ways(family: Family) -> None:
    family.add("original", OLD)
    family.add("upscaled", YOUNG, operation="upscale", source="original", cost=0.06)
    family.add("remixed", YOUNG, operation="remix", source="upscaled")
    family.add("reframed", YOUNG, operation="reframe", source="original")

    middle = lineage(family.settings, _id("upscaled")[:8])  # a unique prefix
    assert middle.record.id == _id("upscaled") and middle.record.operation == "upscale"
    assert [(n.id, n.depth, n.operation) for n in middle.ancestors] == [
        (_id("original"), -1, "generate")  # a null operation is a generation
    ]
    assert [(n.id, n.depth) for n in middle.descendants] == [(_id("remixed"), 1)]

    top = lineage(family.settings, _id("original"))
    assert top.ancestors == ()
    shown = [(n.id, n.depth, n.operation) for n in top.descendants]
    # Depth first: the upscale, then what was made from it, then the reframe.
    assert shown == [
        (_id("upscaled"), 1, "upscale"),
        (_id("remixed"), 2, "remix"),
        (_id("reframed"), 1, "reframe"),
    ]
    assert all(n.state == "current" and n.status == "stored" for n in top.nodes())
    assert top.descendants[0].stored_uri and Path(top.descendants[0].stored_uri).is_file()
    assert top.descendants[0].public_url is None  # no public base: nothing public implied

    # The CLI: one line per image with id, operation, status, time and location.
    result = CliRunner().invoke(
        main, ["lineage", _id("remixed")], env={"IDEOGRAM_STORAGE": family.settings.storage}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "ancestors (oldest first):"
    assert lines[1].split()[:3] == [_id("original"), "generate", "stored"]
    assert lines[2].split()[:3] == [_id("upscaled"), "upscale", "stored"]
    assert lines[4].split()[:3] == [_id("remixed"), "remix", "stored"]
    assert lines[5] == "descendants: none"
    as_json = CliRunner().invoke(
        main,
        ["lineage", _id("original"), "--format", "json"],
        env={"IDEOGRAM_STORAGE": family.settings.storage},
    )
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert [d["operation"] for d in data["descendants"]] == ["upscale", "remix", "reframe"]


def test_lineage_refuses_unknown_and_short_ids(family: Family) -> None:
    family.add("original", OLD)
    with pytest.raises(RecordIdError, match="no record"):
        lineage(family.settings, "ffffff00")
    env = {"IDEOGRAM_STORAGE": family.settings.storage}
    result = CliRunner().invoke(main, ["lineage", "abc"], env=env)
    assert result.exit_code != 0 and "too short" in result.output
    result = CliRunner().invoke(main, ["lineage", "ffffff00"], env=env)
    assert result.exit_code != 0 and "no record with id 'ffffff00'" in result.output


def test_ambiguous_prefix_is_refused(family: Family) -> None:
    """Ids made to share eight characters: the prefix is refused, naming both records."""
    settings, tables = family.settings, family.tables
    common = "abcdef01"
    records = [
        GenerationRecord(
            id=common + suffix,
            row=row,
            image_index=0,
            status="rejected",
            created_at=OLD,
            date=OLD.date(),
            batch="twins",
        )
        for row, suffix in ((1, "aaaa"), (2, "bbbb"))
    ]
    tables.write("twins", records)
    with pytest.raises(RecordIdError, match="ambiguous") as caught:
        lineage(settings, common)
    assert common + "aaaa" in str(caught.value) and common + "bbbb" in str(caught.value)


def test_retention_treats_derived_images_on_their_own(family: Family) -> None:
    """Pinning an original pins none of its descendants; deleting an original keeps them,
    and their lineage shows it as deleted."""
    pinned = family.add("pinned-original", OLD)
    old_child = family.add("old-upscale", OLD, operation="upscale", source="pinned-original")
    expired = family.add("expired-original", OLD)
    young_child = family.add(
        "young-remix", YOUNG, operation="remix", source="expired-original", cost=0.08
    )
    grandchild = family.add("young-reframe", YOUNG, operation="reframe", source="young-remix")
    set_pinned(family.settings, [pinned], True)

    result = run_cleanup(family.settings, family.store, POLICY, AS_OF, vacuum_hours=0)

    assert sorted(result.plan.ids) == sorted([old_child, expired])
    assert family.ids() == {pinned, young_child, grandchild}
    assert family.store.head(image_key(young_child, "2024-06-01")) is not None
    assert family.store.head(image_key(expired, "2024-01-02")) is None
    assert family.store.head(image_key(old_child, "2024-01-02")) is None
    assert family.store.head(image_key(pinned, "2024-01-02")) is not None

    # The deleted original is still an ancestor, shown as deleted (from usage_rollup).
    found = lineage(family.settings, grandchild)
    assert [(n.id, n.state, n.status) for n in found.ancestors] == [
        (young_child, "current", "stored"),
        (expired, "deleted", "deleted"),
    ]
    assert found.ancestors[1].location.startswith("deleted by retention")
    assert found.ancestors[1].operation == "generate"
    # ... and a deleted descendant under a pinned original.
    top = lineage(family.settings, pinned)
    assert [(n.id, n.operation, n.state) for n in top.descendants] == [
        (old_child, "upscale", "deleted")
    ]
    result = CliRunner().invoke(
        main, ["lineage", grandchild], env={"IDEOGRAM_STORAGE": family.settings.storage}
    )
    assert result.exit_code == 0, result.output
    assert f"{expired}  generate  deleted" in result.output


def test_descriptions_are_set_in_place_and_searched(family: Family) -> None:
    image = family.add("harbour", OLD, prompt="A quiet harbour at dawn")
    other = family.add("market", OLD, prompt="A busy market")
    changed = set_description(
        family.tables, image[:8], "  Fishing boats moored beside a lighthouse, soft fog.\x00 "
    )
    assert changed.record_id == image and changed.current
    assert changed.description == "Fishing boats moored beside a lighthouse, soft fog."

    con = history.connect(family.settings, family.store)
    try:
        # Words of the description find the image, as words of a prompt do.
        found = search(con, SearchFilters(text="lighthouse"))
        assert [row["id"] for row in found] == [image]
        assert found[0]["description"] == changed.description
        assert [row["id"] for row in search(con, SearchFilters(text='"soft fog"'))] == [image]
        assert [row["id"] for row in search(con, SearchFilters(text="market"))] == [other]
        events = con.execute(
            "SELECT event, description FROM generation_records WHERE id = ? ORDER BY recorded_at",
            [image],
        ).fetchall()
    finally:
        con.close()
    assert events == [("generate", None), ("describe", changed.description)]
    with pytest.raises(ValueError, match="empty"):
        set_description(family.tables, image, " \n ")
    with pytest.raises(RecordIdError):
        set_description(family.tables, "ffffff00", "text")

    # The CLI shows it too.
    result = CliRunner().invoke(
        main,
        ["search", "moored", "--format", "json"],
        env={"IDEOGRAM_STORAGE": family.settings.storage},
    )
    assert result.exit_code == 0, result.output
    assert [row["description"] for row in json.loads(result.output)] == [changed.description]


def test_report_breaks_cost_down_by_operation(family: Family) -> None:
    family.add("first", OLD, cost=0.03)
    family.add("second", OLD, cost=0.03)
    family.add("bigger", YOUNG, operation="upscale", source="second", cost=0.06)
    family.add("words", YOUNG, operation="describe", source="first", cost=0.01)
    set_description(family.tables, _id("first"), "two boats")  # not billed again
    # The first generation expires: its cost stays in the report through the roll-up.
    run_cleanup(family.settings, family.store, RetentionPolicy(default_days=100), AS_OF)
    assert _id("first") not in family.ids()

    report = build_report(family.settings, family.store, date(2024, 1, 1), date(2024, 6, 30))
    by_operation = {
        row["key"]: (row["records"], round(row["cost_usd"], 4))
        for row in report.by_dimension["operation"].to_dict("records")
    }
    assert by_operation == {"generate": (2, 0.06), "upscale": (1, 0.06), "describe": (1, 0.01)}
    assert round(report.totals["cost_usd"], 4) == 0.13
    figures = {(s, k, m): v for s, k, m, v in figure_rows(report) if s == "by_operation"}
    assert figures[("by_operation", "upscale", "cost_usd")] == pytest.approx(0.06)

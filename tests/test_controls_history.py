"""Issue 18's controls in the history: columns on every record, old tables evolved in place,
and ``reproduce`` sending the very same controls.

Real components: Delta tables written by ``deltalake`` and read by DuckDB, the bundled
simulator on loopback (its billing counter hashes every body it was sent).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from ideogram_pipeline import history
from ideogram_pipeline.history.layout import GENERATIONS, RECORDS
from ideogram_pipeline.history.reproduce import plan, reproduce
from ideogram_pipeline.history.schema import TABLE_SCHEMA, GenerationRecord, records_table
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.history.views import read_rows
from ideogram_pipeline.ideogram.generation import CONTROL_FIELDS
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.history_support import make_root

DAY = datetime(2025, 3, 1, 9, tzinfo=UTC)
OLD_SCHEMA = pa.schema([f for f in TABLE_SCHEMA if f.name not in CONTROL_FIELDS])


def _record(row: int, **extra: object) -> GenerationRecord:
    return GenerationRecord.from_row(
        {
            "batch": "brand",
            "id": f"brand-{row}".ljust(32, "0"),
            "row": row,
            "image_index": 0,
            "prompt": f"A poster {row}",
            "status": "stored",
            "attempt_id": f"a{row}",
            "created_at": DAY,
            "date": DAY.date().isoformat(),
            **extra,
        }
    )


def _generations(settings: Settings, columns: str) -> list[tuple[Any, ...]]:
    """``row`` and ``columns`` of every current record, by row, through the history views."""
    con = history.connect(settings)
    try:
        return con.execute(f"SELECT row, {columns} FROM generations ORDER BY row").fetchall()
    finally:
        con.close()


def test_a_table_written_before_the_controls_evolves_and_keeps_its_rows(tmp_path: Path) -> None:
    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    tables = HistoryTables(settings)
    old = records_table([_record(1)], DAY).select(OLD_SCHEMA.names).cast(OLD_SCHEMA)
    for name in (GENERATIONS, RECORDS):  # laid out as a release before issue 18 did
        DeltaTable.create(tables.uri(name), schema=OLD_SCHEMA, partition_by=["date", "batch"])
        write_deltalake(tables.uri(name), old, mode="append", partition_by=["date", "batch"])
    # A writer that reads before writing (tag, pin) sees the new columns as null.
    [before] = read_rows(settings, GENERATIONS, ["brand-1".ljust(32, "0")]).to_pylist()
    assert before["prompt"] == "A poster 1" and before["style_codes"] is None

    styled = _record(2, style_codes=("AAFF5733", "0133FF57"), color_palette="EMBER")
    tables.write("brand", [styled])
    rows = _generations(settings, "style_codes, color_palette, transparent")
    assert rows == [(1, None, None, None), (2, ["AAFF5733", "0133FF57"], "EMBER", None)]


CONTROLS_BATCH = (
    "prompt,seed,style_codes,color_palette,style_preset,transparent,rendering_speed\n"
    "A brand poster of a fox,11,AAFF5733|0133FF57,#FF0000:0.6|#0000FF:0.4,,,\n"
    "A brand poster of an owl,12,,EMBER,ART_DECO,,QUALITY\n"
    "A mug on nothing,13,,,,true,TURBO\n"
)


@pytest.fixture(scope="module")
def simulator() -> Simulator:
    with running_simulator(SimulatorConfig(image_scale=0.25, latency_s=0)) as sim:
        yield sim


@pytest.mark.slow
def test_records_carry_the_controls_and_reproduce_sends_them_again(
    simulator: Simulator, tmp_path: Path
) -> None:
    root = make_root("local", simulator, None, tmp_path / "root")
    root.run("brand", CONTROLS_BATCH)
    fox, owl, mug = (root.records(f"row = {row}")[0] for row in (1, 2, 3))
    assert fox["style_codes"] == ["AAFF5733", "0133FF57"]
    assert fox["color_palette"] == "#FF0000:0.6|#0000FF:0.4"
    assert (owl["color_palette"], owl["style_preset"]) == ("EMBER", "ART_DECO")
    assert mug["transparent"] is True and mug["cost_usd"] == 0.07
    bodies_before = dict(simulator.stats.billed_by_body_hash)
    con = history.connect(root.settings, root.store)
    try:
        planned = plan(con, ids=[fox["id"], owl["id"], mug["id"]])
    finally:
        con.close()
    assert all(item.request.request_hash() for item in planned)
    result = reproduce(root.settings, root.store, planned, label="ids")
    assert len(result.items) == 3 and all(item.identical for item in result.items)
    # Every body sent again was already billed once: the very same controls went out.
    bodies_after = simulator.stats.billed_by_body_hash
    sent_again = {h for h, n in bodies_after.items() if n > bodies_before.get(h, 0)}
    assert len(sent_again) == 3 and sent_again <= set(bodies_before)
    new = {item.source_id: item.new_id for item in result.items}
    [again] = root.records("id = ?", [new[fox["id"]]])
    assert again["request_hash"] == fox["request_hash"]
    assert again["style_codes"] == fox["style_codes"]


#: Issue 19's columns, which a table written before it lacks.
ISSUE_19_COLUMNS = ("operation", "derived_from", "description", "public_url")


def test_a_table_written_before_issue_19_reads_and_evolves(tmp_path: Path) -> None:
    """No ``migrate`` step for operations: an older table reads with the new columns null
    (search and lineage work on it) and gains them on its next write."""
    from click.testing import CliRunner

    from ideogram_pipeline.cli import main

    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    tables = HistoryTables(settings)
    older = pa.schema([f for f in TABLE_SCHEMA if f.name not in ISSUE_19_COLUMNS])
    old = records_table([_record(1)], DAY).select(older.names).cast(older)
    for name in (GENERATIONS, RECORDS):
        DeltaTable.create(tables.uri(name), schema=older, partition_by=["date", "batch"])
        write_deltalake(tables.uri(name), old, mode="append", partition_by=["date", "batch"])
    source = "brand-1".ljust(32, "0")
    env = {"IDEOGRAM_STORAGE": str(tmp_path / "root")}
    found = CliRunner().invoke(main, ["search", "poster", "--format", "json"], env=env)
    assert found.exit_code == 0, found.output
    assert '"operation": null' in found.output
    shown = CliRunner().invoke(main, ["lineage", source[:10]], env=env)
    assert shown.exit_code == 0, shown.output

    derived = _record(2, operation="upscale", derived_from=source)
    tables.write("brand", [derived])
    rows = _generations(settings, "operation, derived_from")
    assert rows == [(1, None, None), (2, "upscale", source)]
    assert "upscale" in CliRunner().invoke(main, ["lineage", source[:10]], env=env).output

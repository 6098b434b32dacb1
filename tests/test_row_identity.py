"""Rows are known by their content, not their line (issue 17, point 1).

Real components: batches run through ``execute_batch`` against the bundled simulator on
loopback, whose billing counters say what was paid; the history is real Delta tables in a
folder, read through DuckDB. Each case edits the file between runs the way a person does
(insert, delete, reorder, change a row) and checks that only new content is paid for and
that ``generations`` shows exactly the rows of the latest file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ideogram_pipeline import history
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.search import SearchFilters, search
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.history_support import Root, make_root

PROMPTS = [f"A paper lantern shaped like animal number {n}" for n in range(1, 11)]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with running_simulator(SimulatorConfig(latency_s=0.0, image_scale=0.25)) as simulator:
        yield simulator


@pytest.fixture
def root(sim: Simulator, tmp_path: Path) -> Root:
    return make_root("local", sim, None, tmp_path / "root")


def _csv(prompts: list[str], seeds: list[int | None] | None = None) -> str:
    seeds = seeds or [None] * len(prompts)
    lines = ["prompt,seed"]
    lines += [f'"{p}",{"" if s is None else s}' for p, s in zip(prompts, seeds, strict=True)]
    return "\n".join(lines) + "\n"


def _paid(sim: Simulator, root: Root, key: str, text: str, **options: Any) -> int:
    """Run ``text`` as batch ``key``; the images the simulator billed for it."""
    before = sim.stats.billed_images
    root.run(key, text, **options)
    return sim.stats.billed_images - before


def _file_rows(root: Root, key: str) -> list[tuple[int, str]]:
    """(line, prompt) of the batch in ``generations`` as people query it."""
    con = history.connect(root.settings, root.store, file_rows_only=True)
    try:
        rows = con.execute(
            'SELECT "row", prompt FROM generations WHERE batch = ? ORDER BY "row"', [key]
        ).fetchall()
    finally:
        con.close()
    return [(int(line), str(prompt)) for line, prompt in rows]


def _left_rows(root: Root, key: str) -> list[str]:
    """Prompts of the batch's rows that left its file (kept, with their images)."""
    con = history.connect(root.settings, root.store, file_rows_only=True)
    try:
        rows = con.execute(
            "SELECT prompt FROM generations_all WHERE batch = ? AND NOT in_file "
            "AND status = 'stored' AND image_key IS NOT NULL ORDER BY prompt",
            [key],
        ).fetchall()
    finally:
        con.close()
    return [str(prompt) for (prompt,) in rows]


def test_insert_delete_reorder_and_change_pay_only_for_new_content(
    sim: Simulator, root: Root
) -> None:
    assert _paid(sim, root, "lanterns", _csv(PROMPTS)) == 10

    # Delete row 5: nothing is paid, and the file's 9 rows are what `generations` shows.
    without_five = PROMPTS[:4] + PROMPTS[5:]
    assert _paid(sim, root, "lanterns", _csv(without_five)) == 0
    assert _file_rows(root, "lanterns") == list(enumerate(without_five, start=1))
    assert _left_rows(root, "lanterns") == [PROMPTS[4]]

    # Reverse the order: nothing paid, each row shown on its new line.
    reversed_rows = list(reversed(without_five))
    assert _paid(sim, root, "lanterns", _csv(reversed_rows)) == 0
    assert _file_rows(root, "lanterns") == list(enumerate(reversed_rows, start=1))

    # Insert a new row at the top and bring row 5 back: only the new row is paid.
    grown = ["A brand new lantern of glass", *reversed_rows, PROMPTS[4]]
    assert _paid(sim, root, "lanterns", _csv(grown)) == 1
    assert _file_rows(root, "lanterns") == list(enumerate(grown, start=1))
    assert _left_rows(root, "lanterns") == []

    # Change one row: it pays once; the old version keeps its paid image, out of the file.
    changed = list(grown)
    changed[3] = changed[3] + ", in the rain"
    assert _paid(sim, root, "lanterns", _csv(changed)) == 1
    assert _paid(sim, root, "lanterns", _csv(changed)) == 0
    assert _file_rows(root, "lanterns") == list(enumerate(changed, start=1))
    assert _left_rows(root, "lanterns") == [grown[3]]

    # Search finds the row that left the file only when asked, and says it left.
    con = history.connect(root.settings, root.store, file_rows_only=True)
    try:
        found = search(con, SearchFilters(text=f'"{grown[3]}"', batch="lanterns"))
        hidden = [r for r in found if r["prompt"] == grown[3]]
        every = search(con, SearchFilters(text=f'"{grown[3]}"', batch="lanterns", all_rows=True))
    finally:
        con.close()
    assert hidden == []
    assert [(r["prompt"], r["in_file"]) for r in every if r["prompt"] == grown[3]] == [
        (grown[3], False)
    ]
    # `query` shows the file's 11 rows in `generations`, all 12 in `generations_all`.
    sql = (
        "SELECT (SELECT count(*) FROM generations WHERE batch = 'lanterns') AS file, "
        "(SELECT count(*) FROM generations_all WHERE batch = 'lanterns') AS every"
    )
    shown = CliRunner(env=root.env).invoke(main, ["query", sql, "--format", "csv"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.split() == ["file,every", "11,12"]
    # Retention and the other maintenance code see every row (the table itself).
    (total,) = root.query("SELECT count(*) FROM generations WHERE batch = 'lanterns'")[0:1]
    assert total == (12,)


def test_identical_seeded_rows_are_paid_once_and_linked(sim: Simulator, root: Root) -> None:
    prompts = ["A teal kettle"] * 3 + ["A red kettle"]
    text = _csv(prompts, [7, 7, 7, 7])
    assert _paid(sim, root, "kettles", text) == 2
    rows = root.query(
        'SELECT "row", status, cost_usd, duplicate_of, image_key, id FROM generations '
        "WHERE batch = 'kettles' ORDER BY \"row\""
    )
    assert [r[1] for r in rows] == ["stored"] * 4
    first = rows[0]
    for repeat in rows[1:3]:
        assert repeat[2] == 0.0 and repeat[3] == first[5] and repeat[4] == first[4]
    assert rows[3][3] is None and rows[3][2] > 0
    # Run again, reordered: nothing is paid, the four rows stay four.
    assert _paid(sim, root, "kettles", _csv(list(reversed(prompts)), [7, 7, 7, 7])) == 0
    assert len(_file_rows(root, "kettles")) == 4


def test_identical_rows_without_a_seed_are_each_kept(sim: Simulator, root: Root) -> None:
    """Without a seed two identical rows are two different pictures: both paid, both kept,
    and deleting one leaves the other (and the deleted one's image) alone."""
    prompts = ["A fox in fresh snow", "A fox in fresh snow", "An owl at dusk"]
    assert _paid(sim, root, "foxes", _csv(prompts)) == 3
    assert _paid(sim, root, "foxes", _csv(list(reversed(prompts)))) == 0
    assert _paid(sim, root, "foxes", _csv(prompts[1:])) == 0
    assert _file_rows(root, "foxes") == list(enumerate(prompts[1:], start=1))
    assert _left_rows(root, "foxes") == ["A fox in fresh snow"]

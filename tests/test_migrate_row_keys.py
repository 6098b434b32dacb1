"""``migrate`` keys the records of earlier releases by their content (issue 17, point 1).

Two earlier layouts: the old append-only Parquet (the fixture written by release 2314ac4,
see ``test_migrate.py``) and the Delta tables of the release before issue 17, whose rows
have no ``row_key``. After ``migrate`` every current row carries the key a run computes for
the same row of a file, a run of the batch (reordered) pays nothing, and a second
``migrate`` changes nothing. Real components throughout: Delta tables on disk, DuckDB, the
simulator on loopback.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable, write_deltalake

from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.history.migrate import migrate
from ideogram_pipeline.history.row_keys import record_identity, row_key, row_keys
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, HistoryTables
from ideogram_pipeline.history.views import HistoryNeedsMigration
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
from tests.history_support import Root, make_root
from tests.test_migrate import local_root, versions

CSV = (
    "prompt,seed,num_images\n"
    '"A lighthouse in fog",11,1\n'
    '"A harbour at dawn",,1\n'
    '"A harbour at dawn",,1\n'
    '"Too many gulls",,99\n'
    '"Two tugboats",,2\n'
)


def _current(root: Root) -> list[tuple[str, int, int, str, str | None, str | None, str | None]]:
    return [
        (str(b), int(r), int(i), str(k), h, p, e)
        for b, r, i, k, h, p, e in root.query(
            'SELECT batch, "row", image_index, row_key, request_hash, prompt, error '
            'FROM generations ORDER BY batch, "row", image_index'
        )
    ]


def _expected_keys(
    rows: list[tuple[str, int, int, str, str | None, str | None, str | None]],
) -> dict[tuple[str, int], str]:
    """The keys a run computes, worked out from the records: identity, then occurrence in
    line order within the batch."""
    seen: dict[str, Counter[str]] = {}
    keys: dict[tuple[str, int], str] = {}
    for batch, line, _index, _key, request_hash, prompt, error in rows:
        if (batch, line) in keys:
            continue
        identity = record_identity(request_hash, prompt, error)
        counter = seen.setdefault(batch, Counter())
        keys[(batch, line)] = row_key(identity, counter[identity])
        counter[identity] += 1
    return keys


def test_an_old_layout_history_is_keyed_and_a_second_migrate_does_nothing(
    tmp_path: Path,
) -> None:
    settings, store = local_root(tmp_path)
    result = migrate(settings, store)
    assert result.keyed is not None and result.keyed.rows > 0
    root = Root(settings, {}, store, "local")
    rows = _current(root)
    assert rows and all(row[3] for row in rows)
    expected = _expected_keys(rows)
    assert {(b, r): k for b, r, _i, k, *_ in rows} == expected
    # The audit trail's copies of current records carry the same keys.
    copies = root.query(
        "SELECT DISTINCT r.id, r.row_key, g.row_key FROM generation_records r "
        "JOIN generations g USING (id) WHERE r.event = 'generate'"
    )
    assert copies and all(mine == theirs for _id, mine, theirs in copies)
    assert root.query("SELECT count(*) FROM generations WHERE NOT in_file") == [(0,)]

    before = versions(settings)
    again = migrate(settings, store)
    assert again.keyed is not None and again.keyed.rows == 0
    assert versions(settings) == before


def _strip_row_keys(root: Root) -> None:
    """Rewrite both tables as the release before issue 17 left them: no row_key, no in_file."""
    tables = HistoryTables(root.settings)
    for name in (GENERATIONS, RECORDS):
        data = DeltaTable(tables.uri(name)).to_pyarrow_table()
        data = data.drop_columns(["row_key", "in_file"])
        shutil.rmtree(tables.uri(name))
        write_deltalake(tables.uri(name), data, partition_by=["date", "batch"])


def test_tables_of_the_previous_release_are_keyed_and_the_batch_pays_nothing(
    tmp_path: Path,
) -> None:
    with running_simulator(SimulatorConfig(latency_s=0.0, image_scale=0.25)) as sim:
        root = make_root("local", sim, None, tmp_path / "root")
        root.run("harbour", CSV)
        paid = sim.stats.billed_images
        assert paid == 5  # 1 + 1 + 1 + (rejected) + 2
        _strip_row_keys(root)

        # The batch's records are unkeyed: a run refuses, naming migrate.
        lines = CSV.splitlines()
        reordered = "\n".join([lines[0], *reversed(lines[1:])]) + "\n"
        with pytest.raises(HistoryNeedsMigration, match="ideogram-pipeline migrate"):
            root.run("harbour", reordered)

        result = migrate(root.settings, root.store)
        assert result.keyed is not None and result.keyed.rows == 6
        batch = parse_batch(CSV.encode(), source="harbour.csv", key="harbour")
        keys = row_keys(batch.rows)
        assert {r: k for _b, r, _i, k, *_ in _current(root)} == keys

        # Reordered after the upgrade: every row is found, nothing is paid again.
        summary = root.run("harbour", reordered)
        assert sim.stats.billed_images == paid
        assert summary.stored == 0 and summary.skipped == 4 and summary.rejected == 1

    before = versions(root.settings)
    again = migrate(root.settings, root.store)
    assert again.keyed is not None and again.keyed.rows == 0
    assert versions(root.settings) == before
    # `generations` shows the reordered file's lines.
    reordered_batch = parse_batch(reordered.encode(), source="harbour.csv", key="harbour")
    assert {r: k for _b, r, _i, k, *_ in _current(root)} == row_keys(reordered_batch.rows)

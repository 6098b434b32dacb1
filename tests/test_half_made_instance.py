"""A run killed while Dagster was creating a new SQLite instance.

Dagster creates the instance's event index (``history/runs/index.db``) table by table and
stamps its schema version last, and it checks that file only when the file is missing. A
run killed in between (seen in CI: a kill 2 s into the first run of a new DAGSTER_HOME,
under load) left an index with some tables and no stamp, and every later run then stored
its rows but could not record its Dagster run ("requires the dynamic partitions table ...
run `dagster instance migrate`"). The CLI's runs finish such an index when they open the
instance. Real SQLite instances in a temporary DAGSTER_HOME.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as db
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable

from ideogram_pipeline.cli.launch import open_instance
from ideogram_pipeline.defs.batches.partitions import BATCH_PARTITIONS


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as con:
        return {name for (name,) in con.execute("SELECT name FROM sqlite_master")}


def _cut_short_index(home: Path) -> Path:
    """The event index as a kill inside its creation leaves it: the first table only."""
    index = home / "history" / "runs" / "index.db"
    index.parent.mkdir(parents=True)
    engine = db.create_engine(f"sqlite:///{index}")
    SqlEventLogStorageTable.create(engine)
    engine.dispose()
    return index


def test_an_event_index_cut_short_by_a_kill_is_finished_when_a_run_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = _cut_short_index(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with (
        dg.DagsterInstance.get() as broken,  # what Dagster alone makes of it
        pytest.raises(dg.DagsterInvalidInvocationError, match="instance migrate"),
    ):
        broken.has_dynamic_partition(BATCH_PARTITIONS, "alpha")

    with open_instance() as instance:
        instance.add_dynamic_partitions(BATCH_PARTITIONS, ["alpha"])
        assert instance.has_dynamic_partition(BATCH_PARTITIONS, "alpha")
    assert {"alembic_version", "dynamic_partitions"} <= _tables(index)

    with open_instance() as again:  # a whole index is left as it is
        assert again.get_dynamic_partitions(BATCH_PARTITIONS) == ["alpha"]

"""``generations`` follows the batch's latest file: its rows' lines, and which rows left it.

Rows are merged by their key (``row_keys.py``), so a row that moved keeps its record and
one that left the file keeps its paid images. Before a run this brings the table in line
with the file being run: each row the file holds gets its current line and ``in_file``
true, each row it no longer holds ``in_file`` false (the ``generations`` view people query
hides it; ``generations_all`` and ``in_file = false`` find it; retention treats it like
any other row). One MERGE, and none when nothing changed.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from ideogram_pipeline.history.layout import GENERATIONS
from ideogram_pipeline.history.row_keys import FileRow
from ideogram_pipeline.history.tables import HistoryTables, retry_commit
from ideogram_pipeline.safe_output import sql_literal

__all__ = ["sync_file_rows"]


def sync_file_rows(
    tables: HistoryTables,
    batch: str,
    keys: Mapping[int, str],
    places: Mapping[str, FileRow],
) -> int:
    """Set ``row`` and ``in_file`` of ``batch``'s rows in ``generations`` from the file's
    ``keys`` (line -> row key), given where its rows stand now (``places``). Returns the
    row keys changed."""
    lines = {key: line for line, key in keys.items()}
    changed: dict[str, tuple[int | None, bool]] = {}
    for key, place in places.items():
        line = lines.get(key)
        if line is None:
            if place.in_file is not False:
                changed[key] = (None, False)  # left the file: its line stays as it was
        elif place.row != line or place.in_file is not True:
            changed[key] = (line, True)
    if not changed:
        return 0
    ordered = sorted(changed)
    source = pa.table(
        {
            "row_key": pa.array(ordered, pa.string()),
            "row": pa.array([changed[k][0] for k in ordered], pa.int32()),
            "in_file": pa.array([changed[k][1] for k in ordered], pa.bool_()),
        }
    )

    def go() -> int:
        merger = tables.table(GENERATIONS).merge(
            source,
            predicate=f"t.batch = {sql_literal(batch)} AND t.row_key = s.row_key",
            source_alias="s",
            target_alias="t",
        )
        merger = merger.when_matched_update(
            updates={'"row"': 'coalesce(s."row", t."row")', "in_file": "s.in_file"}
        )
        return int(merger.execute().get("num_target_rows_updated", 0))

    retry_commit(go, "file rows")
    return len(changed)

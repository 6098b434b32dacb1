"""What a history connection needs to know about one file listing, remembered per listing.

Opening the views over a listing means working out, from cached per-batch answers
(``history_index.py``), which rows each view hides and whether every file has the same,
complete schema. At a few thousand files that bookkeeping (grouping files by batch,
signing each batch, joining the cached rows to the listing, numbering the files that hold
hidden rows) cost a short query more than the query itself spent beyond a bare
``read_parquet``. Yet the answer is a pure function of the listing, and metadata files are
immutable: so the whole answer is kept under a signature of the listing, and a connection
over an unchanged history reads one small Parquet file and one JSON file instead.

A plan is only written for listings of :data:`PLAN_MIN_FILES` or more (below that the
bookkeeping takes a few milliseconds), named by the listing's signature, written whole
(temp file, then rename), and the oldest are deleted beyond :data:`PLANS_KEPT` per root.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ideogram_pipeline.history_index import (
    HIDDEN_TABLE,
    cache_root,
    listing_signature,
    load_hidden_rows,
    rules_digest,
    same_schema,
    write_parquet,
)
from ideogram_pipeline.safe_output import sql_literal
from ideogram_pipeline.storage.base import ObjectInfo, ObjectStore
from ideogram_pipeline.storage.metadata import METADATA_SCHEMA

if TYPE_CHECKING:
    import duckdb

__all__ = ["PLANS_KEPT", "PLAN_MIN_FILES", "ViewPlan", "hidden_table", "plan_views"]

#: Listings shorter than this are planned afresh each time (it takes milliseconds).
PLAN_MIN_FILES = 256
#: Plans kept per storage root (at least one): a history that grows writes one per listing.
PLANS_KEPT = 8
#: Bumped whenever what a plan holds changes, so an older plan is never misread.
_FORMAT = 2
#: What each view hides (``generation_records`` keeps older attempts: only copies go).
_HIDES = {"generation_records": "NOT generations_only", "generations": "true"}
#: Temporary files older than this in the plans folder were left by a killed writer.
_STALE_TEMP_S = 600.0


@dataclass(frozen=True)
class ViewPlan:
    """How to read one listing: ``uniform`` (every file has the same columns, so no
    ``union_by_name``), ``complete`` (and every column of the schema), and per view the
    positions in the listing of the files that hold rows it hides (read through an
    anti-join against :func:`hidden_table`; the others are read plainly)."""

    uniform: bool
    complete: bool
    dirty: dict[str, list[int]] = field(default_factory=dict)


def hidden_table(view: str) -> str:
    """The temp table of ``view``'s hidden rows: ``file_index`` (a position among the
    view's dirty files, as DuckDB numbers them when they are read in that order) and
    ``file_row_number``."""
    if view not in _HIDES:
        raise ValueError(f"no history view named {view!r}")
    return f"_hidden_{view}"


@functools.cache
def _code_version() -> str:
    """What besides the listing decides a plan: its format, the schema (``complete``) and
    the hiding rules. A plan from another version of them is never found."""
    parts = [str(_FORMAT), ",".join(sorted(METADATA_SCHEMA.names)), repr(_HIDES), rules_digest()]
    return "|".join(parts)


def _folder(store: ObjectStore) -> Path:
    """Plans of ``store`` live beside its other caches (``history_index.cache_root``)."""
    return cache_root(store).with_suffix(".plans")


def plan_views(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    files: Sequence[ObjectInfo],
    uris: Sequence[str],
    views: Collection[str] = tuple(_HIDES),
) -> ViewPlan:
    """The plan for reading exactly ``files`` (whose URIs are ``uris``), with the hidden
    rows of each of ``views`` in its :func:`hidden_table` on ``con``: from the cache when
    this listing was planned before, else worked out for every view (and cached when the
    listing is long enough)."""
    if len(files) < PLAN_MIN_FILES:
        return _work_out(con, store, files, uris)
    signature = listing_signature(files, salt=_code_version())
    folder = _folder(store)
    plan = _load(con, folder, signature, views, len(files))
    if plan is None:
        plan = _work_out(con, store, files, uris)
        _save(con, folder, signature, plan)
    return plan


def _work_out(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    files: Sequence[ObjectInfo],
    uris: Sequence[str],
) -> ViewPlan:
    """The plan from the per-batch caches (``history_index``), every view's table filled."""
    load_hidden_rows(con, store, files, uris)
    uniform, complete = same_schema(con, store, files, METADATA_SCHEMA.names)
    dirty: dict[str, list[int]] = {}
    for view, where in _HIDES.items():
        table = hidden_table(view)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT file_index AS listed, "
            # UBIGINT, as DuckDB's file_index: mixed types would make the join cast every key.
            "(dense_rank() OVER (ORDER BY file_index) - 1)::UBIGINT AS file_index, "
            f"file_row_number FROM {HIDDEN_TABLE} WHERE {where}"
        )
        listed = f"SELECT DISTINCT listed FROM {table} ORDER BY 1"
        dirty[view] = [row[0] for row in con.execute(listed).fetchall()]
    con.execute(f"DROP TABLE {HIDDEN_TABLE}")
    return ViewPlan(uniform, complete, dirty)


def _paths(folder: Path, signature: str) -> tuple[Path, Path]:
    """A plan's description (written last: its presence makes the plan) and its rows."""
    return folder / f"{signature}.json", folder / f"{signature}.parquet"


def _checked_dirty(saved: object, files: int) -> dict[str, list[int]]:
    """The saved dirty-file positions, refused (``ValueError``) unless each is a position
    in a listing of ``files`` files, ascending, for a known view."""
    if not isinstance(saved, dict) or not set(saved) <= set(_HIDES):
        raise ValueError("unexpected views in a plan")
    dirty: dict[str, list[int]] = {}
    for view, positions in saved.items():
        checked = [int(position) for position in positions]
        if checked != sorted(set(checked)) or (
            checked and not 0 <= checked[0] <= checked[-1] < files
        ):
            raise ValueError("positions outside the listing")
        dirty[view] = checked
    return dirty


def _load(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    signature: str,
    views: Collection[str],
    files: int,
) -> ViewPlan | None:
    """The cached plan, the hidden rows of ``views`` loaded; ``None`` when missing,
    unreadable, or its rows disagree with its description (a damaged plan is re-planned
    rather than trusted: a wrong one would show hidden rows or hide real ones)."""
    import duckdb

    described, rows = _paths(folder, signature)
    try:
        saved = json.loads(described.read_text(encoding="utf-8"))
        dirty = _checked_dirty(saved["dirty"], files)
        plan = ViewPlan(bool(saved["uniform"]), bool(saved["complete"]), dirty)
        source = f"read_parquet({sql_literal(str(rows))})"
        for view in views:
            table = hidden_table(view)
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT file_index, file_row_number "
                f"FROM {source} WHERE view_name = {sql_literal(view)}"
            )
            count = (
                f"SELECT count(DISTINCT file_index), coalesce(max(file_index) + 1, 0) FROM {table}"
            )
            expected = len(dirty.get(view, []))
            if con.execute(count).fetchone() != (expected, expected):
                raise ValueError(f"the hidden rows of {view} do not match the plan")
    except (OSError, ValueError, KeyError, TypeError, duckdb.Error):
        return None
    return plan


def _save(con: duckdb.DuckDBPyConnection, folder: Path, signature: str, plan: ViewPlan) -> None:
    """Rows first, then the description that makes them a plan; a failure costs only a
    re-plan next time."""
    described, rows = _paths(folder, signature)
    union = " UNION ALL ".join(
        f"SELECT {sql_literal(view)} AS view_name, file_index, file_row_number "
        f"FROM {hidden_table(view)}"
        for view in _HIDES
    )
    if not write_parquet(con, union, rows):
        return
    text = json.dumps({"uniform": plan.uniform, "complete": plan.complete, "dirty": plan.dirty})
    temp = described.with_name(f".{described.name}.{uuid.uuid4().hex}.tmp")
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, described)
    except OSError:
        temp.unlink(missing_ok=True)
        return
    _prune(folder)


def _prune(folder: Path) -> None:
    """Keep the newest :data:`PLANS_KEPT` plans, counting rows files whose description was
    never written too, and drop temporary files a killed writer left (a plan whose files
    vanish under a reader is simply re-planned)."""
    with contextlib.suppress(OSError):
        newest: dict[str, float] = {}
        for path in folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                modified = path.stat().st_mtime
                if path.suffix == ".tmp":
                    if modified < time.time() - _STALE_TEMP_S:
                        path.unlink(missing_ok=True)
                    continue
                newest[path.stem] = max(newest.get(path.stem, 0.0), modified)
        ordered = sorted(newest, key=newest.__getitem__)
        for stem in ordered[: max(len(ordered) - max(PLANS_KEPT, 1), 0)]:
            (folder / f"{stem}.json").unlink(missing_ok=True)
            (folder / f"{stem}.parquet").unlink(missing_ok=True)

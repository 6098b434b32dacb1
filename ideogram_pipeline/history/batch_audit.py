"""What the history says about one batch: its totals, its rows, its stored bytes.

Plain functions behind the batch asset's metadata and checks (``defs/batches/``) and the
prompts sensor's first look at a folder. A run's own counts say what that run did (a
re-run of a finished batch stores nothing and pays nothing); these say where the batch
stands after every run so far, which is what a person looking at the partition asks.

Their SQL holds literals, not bound parameters: binding one makes DuckDB import pandas,
0.4 s at the end of every batch run.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ideogram_pipeline.history.layout import GENERATIONS, RECORDS
from ideogram_pipeline.history.views import connect
from ideogram_pipeline.safe_output import sql_list, sql_literal
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import LocalStore, ObjectStore, StorageError

#: Images read back at once by the checksum check (16, as the history-wide check reads).
READ_THREADS = 16

__all__ = [
    "BatchTotals",
    "ChecksumReport",
    "batch_totals",
    "missing_rows",
    "recorded_row_keys",
    "recorded_rows",
    "verify_run_checksums",
]


@dataclass(frozen=True)
class BatchTotals:
    """The batch's current rows by status, and what all its records cost to date."""

    rows: int  # CSV rows with at least one current record
    stored: int  # images stored
    unsafe: int
    rejected: int
    failed: int
    unknown: int
    cost_usd: float  # every record ever written for the batch, each id counted once


@dataclass(frozen=True)
class ChecksumReport:
    """Stored images of one run whose bytes were read back and hashed."""

    total: int  # images the run stored
    checked: int
    mismatched: list[str]  # ids whose stored bytes do not hash to the recorded sha256
    unreadable: list[str]  # ids whose object could not be read

    @property
    def passed(self) -> bool:
        return not self.mismatched and not self.unreadable


def batch_totals(settings: Settings, store: ObjectStore, batch: str) -> BatchTotals:
    """Totals of ``batch`` over every run: the current rows of its latest file by status,
    cost of all records (rows that left the file were paid for too)."""
    con = connect(settings, store, views=(GENERATIONS, RECORDS), file_rows_only=True)
    try:
        counts = con.execute(
            'SELECT count(DISTINCT "row"), '
            "count(*) FILTER (status = 'stored'), count(*) FILTER (status = 'unsafe'), "
            "count(*) FILTER (status = 'rejected'), count(*) FILTER (status = 'failed'), "
            "count(*) FILTER (status = 'unknown') "
            f"FROM generations WHERE batch = {sql_literal(batch)}"
        ).fetchone() or (0, 0, 0, 0, 0, 0)
        # A tag or pin change appends another version of a record: count each id once.
        (cost,) = con.execute(
            "SELECT coalesce(sum(cost), 0) FROM (SELECT any_value(cost_usd) AS cost "
            f"FROM generation_records WHERE batch = {sql_literal(batch)} GROUP BY id)"
        ).fetchone() or (0.0,)
    finally:
        con.close()
    rows, stored, unsafe, rejected, failed, unknown = (int(n) for n in counts)
    return BatchTotals(rows, stored, unsafe, rejected, failed, unknown, float(cost or 0.0))


def recorded_rows(
    settings: Settings, store: ObjectStore, batches: Collection[str]
) -> dict[str, set[int]]:
    """The CSV rows of each batch's latest file that have a current record (one query)."""
    if not batches:
        return {}
    con = connect(settings, store, views=(GENERATIONS,), file_rows_only=True)
    try:
        found = con.execute(
            'SELECT batch, list(DISTINCT "row") FROM generations '
            f"WHERE batch IN (SELECT unnest({sql_list(sorted(batches))})) GROUP BY batch"
        ).fetchall()
    finally:
        con.close()
    return {batch: {int(row) for row in rows} for batch, rows in found}


def recorded_row_keys(
    settings: Settings, store: ObjectStore, batches: Collection[str]
) -> dict[str, set[str]]:
    """The row keys (``row_keys.py``) each batch has a current record of (one query).

    What "this file is already done" must compare: a row is known by its content, so an
    edited file with as many lines as before is not done because its line numbers are."""
    if not batches:
        return {}
    con = connect(settings, store, views=(GENERATIONS,))
    try:
        found = con.execute(
            "SELECT batch, list(DISTINCT row_key) FROM generations "
            f"WHERE batch IN (SELECT unnest({sql_list(sorted(batches))})) "
            "AND row_key IS NOT NULL GROUP BY batch"
        ).fetchall()
    finally:
        con.close()
    return {batch: {str(key) for key in keys} for batch, keys in found}


def missing_rows(
    settings: Settings, store: ObjectStore, batch: str, rows: Collection[int]
) -> list[int]:
    """The rows of the batch file with no record in the history (nothing may vanish)."""
    recorded = recorded_rows(settings, store, [batch]).get(batch, set())
    return sorted(set(rows) - recorded)


def _matches(store: ObjectStore, key: str, sha256: str) -> bool | None:
    """Whether the object's bytes hash to ``sha256``; None when it cannot be read."""
    try:
        data = store.get_bytes(key)
    except (StorageError, OSError):
        return None
    return hashlib.sha256(data).hexdigest() == sha256


def verify_run_checksums(
    settings: Settings,
    store: ObjectStore,
    batch: str,
    run_id: str,
    *,
    sample: int,
) -> ChecksumReport:
    """Read back the images ``run_id`` stored for ``batch`` and compare their sha256:
    all of them, or a random ``sample`` of them when there are more.

    Only this run's images: earlier runs checked theirs, and the history-wide check
    (``stored_objects_match``) watches that every stored object still exists.
    """
    con = connect(settings, store, views=(GENERATIONS,))
    try:
        images: Sequence[tuple[str, str, str]] = con.execute(
            "SELECT id, image_key, sha256 FROM generations "
            f"WHERE batch = {sql_literal(batch)} AND run_id = {sql_literal(run_id)} "
            "AND status = 'stored' AND image_key IS NOT NULL ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    chosen = list(images) if len(images) <= sample else random.sample(list(images), sample)
    mismatched: list[str] = []
    unreadable: list[str] = []
    # One GET of a whole object each (on S3, a round trip): in parallel, as the history-wide
    # check reads its objects (lifecycle/orphans.py). A local read is a copy from the page
    # cache, so a thread per core: more only fight over the GIL with the contact sheet
    # drawn beside this (16 threads: 1.4 s for 500 images at the end of a run).
    threads = (os.cpu_count() or 2) if isinstance(store, LocalStore) else READ_THREADS
    with ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = list(pool.map(lambda image: _matches(store, image[1], image[2]), chosen))
    for (image_id, _key, _sha256), outcome in zip(chosen, outcomes, strict=True):
        if outcome is None:
            unreadable.append(image_id)
        elif not outcome:
            mismatched.append(image_id)
    return ChecksumReport(len(images), len(chosen), mismatched, unreadable)

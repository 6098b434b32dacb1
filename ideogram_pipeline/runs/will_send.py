"""Which rows of a batch a run will actually send: what estimates and ``--max-cost`` price.

A run pays only for the rows it sends. It does not send a row that is already done, one
that is rejected, one whose exact seeded request is already stored (a duplicate, linked),
one that repeats an earlier identical seeded row of the same file (linked to it,
``repeats.py``), or one whose paid attempt the ledger still holds: an answer or a
generation id is collected without paying again, and a request sent without an answer is
reported ``unknown`` rather than resent (unless ``--resend-unknown``). After a kill, most
of a batch's in-flight rows are of the last kinds, so an estimate that priced them would
be far above what the resume costs and ``--max-cost`` would refuse a cheap resume.

:func:`plan_sends` follows the engine's own order of decisions (``engine._to_send``, then
``engine._attempt_state``), so ``--dry-run``, ``--max-cost`` and the run agree.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.history.schema import RowState
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.runs.ledger import LedgerEntry
from ideogram_pipeline.runs.records import already_done

__all__ = ["SendPlan", "ledger_is_open", "plan_sends"]


@dataclass(frozen=True)
class SendPlan:
    """The lines a run will send, and how many rows it settles without sending."""

    send: frozenset[int]
    done: int = 0
    rejected: int = 0
    linked: int = 0  # duplicates of stored requests and repeats of an earlier row
    recovered: int = 0  # answered or submitted before a crash: collected, not paid again
    unknown: int = 0  # sent without an answer: reported, not resent


def ledger_is_open(entry: LedgerEntry | None, before: RowState | None) -> bool:
    """Whether ``entry`` is an attempt the next run must finish rather than a concluded
    one (its records all written), as ``engine._attempt_state`` decides."""
    if entry is None:
        return False
    if before is None or before.attempt_id != entry.attempt_id:
        return True
    expected = len(entry.response.images) if entry.response else 0
    return entry.response is not None and len(set(before.indexes)) < expected


def plan_sends(
    batch: Batch,
    previous: Mapping[int, RowState],
    *,
    keys: Mapping[int, str],
    ledger: Mapping[str, LedgerEntry],
    duplicates: Collection[str] = (),
    max_inflight: int | None = None,
    resend_unknown: bool = False,
) -> SendPlan:
    """The rows of ``batch`` a run would send.

    ``previous`` is the state the run goes by (by line), ``keys`` the file's row keys,
    ``ledger`` the newest attempt per row key (``ledger_lines.entries_by_key``),
    ``duplicates`` the request hashes a run links to stored images (none with ``--force``).
    """
    send: set[int] = set()
    claimed: set[str] = set()
    done = rejected = linked = recovered = unknown = 0
    for row in batch.rows:
        if not isinstance(row, GenerationRequest):
            rejected += 1
            continue
        if already_done(row, previous):
            done += 1
            continue
        if max_inflight is not None and row.num_images > max_inflight:
            rejected += 1
            continue
        request_hash = row.request_hash()
        if row.seed is not None and (request_hash in duplicates or request_hash in claimed):
            linked += 1
            continue
        claimed.add(request_hash)
        entry = ledger.get(keys.get(row.row, ""))
        if ledger_is_open(entry, previous.get(row.row)):
            assert entry is not None
            if entry.response is not None or entry.generation_id is not None:
                recovered += 1
                continue
            if not resend_unknown:
                unknown += 1
                continue
        send.add(row.row)
    return SendPlan(frozenset(send), done, rejected, linked, recovered, unknown)

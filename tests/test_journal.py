"""The ledger's write-ahead journal, on a real folder: fast, merged on load, never lost.

Nothing is faked: the journal is a file under ``tmp_path`` and the ledger's store a
:class:`LocalStore`. A run "killed" here is a :class:`Ledger` dropped without finishing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.runs.bookkeeping import JOURNAL_SYNC_S, LedgerWriter
from ideogram_pipeline.runs.journal import JOURNAL_PREFIX, Journal, journal_directory
from ideogram_pipeline.runs.ledger import LEDGER_PREFIX, Ledger, new_attempt_id
from ideogram_pipeline.runs.pools import RunPools
from ideogram_pipeline.runs.retrying import StorageRetry
from ideogram_pipeline.storage import LocalStore, NoSpaceLeft

REQUEST = GenerationRequest(row=3, prompt="A lighthouse made of sugar", seed=9)


def _ledger(store: LocalStore) -> Ledger:
    return Ledger(store, "sugar", Journal(journal_directory(store), "sugar"))


def test_a_journaled_event_is_durable_without_its_replica_and_copied_on_load(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    killed = _ledger(store)
    attempt = new_attempt_id()
    killed.journal_event(REQUEST, attempt, "intent", mode="async")
    killed.journal_event(REQUEST, attempt, "submitted", generation_id="gen-1")
    # Killed here: no replica was written, only the journal holds the two events.
    assert list(store.list(f"{LEDGER_PREFIX}/")) == []
    assert journal_directory(store) == tmp_path / JOURNAL_PREFIX

    rerun = _ledger(store)
    entries = rerun.load()
    entry = entries[(3, REQUEST.request_hash())]
    assert entry.generation_id == "gen-1" and entry.mode == "async"
    # What the replicas missed is now in the store: a third run needs no journal.
    assert len(list(store.list(f"{LEDGER_PREFIX}/sugar/"))) == 2
    rerun.finish_journal()
    assert list((tmp_path / JOURNAL_PREFIX / "sugar").glob("*.jsonl")) == []
    assert _ledger(store).load()[(3, REQUEST.request_hash())].generation_id == "gen-1"


def test_a_torn_last_line_and_a_withdrawn_intent_leave_no_entry(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = _ledger(store)
    attempt = new_attempt_id()
    first.journal_event(REQUEST, attempt, "intent", mode="sync")
    first.replicate(first.event_body(REQUEST, attempt, "intent", mode="sync"))
    first.withdraw_intent(REQUEST, attempt)  # stopped before sending
    assert first.journal is not None
    first.journal.close()
    with first.journal.path.open("ab") as handle:
        handle.write(b'{"event":"intent","row":4,"request_ha')  # killed mid-append
    assert _ledger(store).load() == {}


def test_an_append_takes_well_under_a_millisecond(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "speed")
    body = {"event": "submitted", "row": 1, "request_hash": "ab" * 32, "generation_id": "x" * 32}
    journal.append(body)  # opens the file
    started = time.perf_counter()
    for n in range(2000):
        journal.append({**body, "row": n})
    per_append = (time.perf_counter() - started) / 2000
    journal.close()
    assert per_append < 0.001, per_append
    assert len(Journal.read(journal.path)) == 2001


class _RestartingStore(LocalStore):
    """A real local store that refuses its first two ledger writes (an outage)."""

    refusals = 2

    def put_bytes(self, key: str, data: bytes, **options: Any) -> None:
        if key.startswith(f"{LEDGER_PREFIX}/") and self.refusals:
            self.refusals -= 1
            raise ConnectionRefusedError("store restarting")
        super().put_bytes(key, data, **options)


def _writer(ledger: Ledger, pools: RunPools, retries: list[BaseException]) -> LedgerWriter:
    def full(exc: NoSpaceLeft) -> None:
        raise AssertionError(f"unexpected full disk: {exc}")

    quick = StorageRetry(attempts=4, first_delay_s=0.01, max_delay_s=0.05)
    return LedgerWriter(
        ledger, pools, retry=quick, on_retry=retries.append, on_no_space=full, no_space=lambda: None
    )


def test_a_local_root_copies_to_the_store_only_the_rows_a_run_leaves_open(
    tmp_path: Path,
) -> None:
    """A local root's journal lies in the root: during a run it is the ledger. At the end,
    only the events of rows left open (no records yet) reach the store, waiting out an
    outage, a withdrawn intent never does, and the journal goes; the next run resumes the
    open row."""
    store = _RestartingStore(tmp_path)
    retries: list[BaseException] = []
    done, left, stopped = (
        GenerationRequest(row=n, prompt=f"A lighthouse made of sugar, take {n}", seed=n)
        for n in (1, 2, 3)
    )

    async def run() -> None:
        ledger = Ledger(
            store, "sugar", Journal(journal_directory(store), "sugar"), defer_replicas=True
        )
        pools = RunPools(2)
        try:
            book = _writer(ledger, pools, retries)
            for request in (done, left, stopped):
                book.journal(request, f"attempt-{request.row}", "intent", mode="async")
            for request in (done, left):
                book.journal(request, f"attempt-{request.row}", "submitted", generation_id="g")
            await book.write(ledger.withdraw_intent, stopped, "attempt-3")  # never sent
            await asyncio.sleep(JOURNAL_SYNC_S * 2)  # the journal's fdatasync runs meanwhile
            assert list(store.list(f"{LEDGER_PREFIX}/")) == []  # the journal alone, so far
            await book.all_replicated(concluded={(done.row, done.request_hash())})
        finally:
            pools.close()

    asyncio.run(run())
    copied = [info.key for info in store.list(f"{LEDGER_PREFIX}/sugar/")]
    assert len(copied) == 2 and all("/000002-" in key for key in copied)
    assert len(retries) == 2  # the refused copies were retried, not lost
    assert list((tmp_path / JOURNAL_PREFIX / "sugar").glob("*.jsonl")) == []
    entries = _ledger(store).load()
    assert list(entries) == [(left.row, left.request_hash())]
    assert entries[(left.row, left.request_hash())].generation_id == "g"


def test_a_local_root_run_cut_short_leaves_its_journal_for_the_next_run(tmp_path: Path) -> None:
    """Rows of a run cut short may be half recorded: nothing is dropped or copied, and the
    journal stays, exactly as after a kill."""
    store = LocalStore(tmp_path)

    async def run() -> None:
        ledger = Ledger(
            store, "sugar", Journal(journal_directory(store), "sugar"), defer_replicas=True
        )
        pools = RunPools(2)
        try:
            book = _writer(ledger, pools, [])
            book.journal(REQUEST, "attempt-1", "intent", mode="async")
            book.journal(REQUEST, "attempt-1", "submitted", generation_id="gen-1")
            await book.all_replicated(timeout_s=2.0)
        finally:
            pools.close()

    asyncio.run(run())
    assert list(store.list(f"{LEDGER_PREFIX}/")) == []
    assert len(list((tmp_path / JOURNAL_PREFIX / "sugar").glob("*.jsonl"))) == 1
    assert _ledger(store).load()[(3, REQUEST.request_hash())].generation_id == "gen-1"

"""The ledger's write-ahead journal, on a real folder: fast, merged on load, never lost.

Nothing is faked: the journal is a file under ``tmp_path`` and the ledger's store a
:class:`LocalStore`. A run "killed" here is a :class:`Ledger` dropped without finishing.
"""

from __future__ import annotations

import time
from pathlib import Path

from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.runs.journal import JOURNAL_PREFIX, Journal, journal_directory
from ideogram_pipeline.runs.ledger import LEDGER_PREFIX, Ledger, new_attempt_id
from ideogram_pipeline.storage import LocalStore

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
    first.replicate(first._body(REQUEST, attempt, "intent", mode="sync"))
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

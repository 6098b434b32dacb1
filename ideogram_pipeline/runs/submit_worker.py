"""The submitting process itself (see ``submit_process.py`` for why it exists).

Kept to what a POST and a journal line need (httpx and ``journal.py``), so that it is up
before a run's first request: it starts while the run reads its batch.

Messages are pickled tuples over one duplex pipe. To the process: a :class:`Settings`
first (the API key never goes on a command line), then :class:`SubmitJob`\\ s, ``"stop"``
(send nothing new) or ``None`` (no more work). From it: ``("ready",)``, then for each job
``("intent", id, line)`` once its intent is durable (``("sending", id)`` instead for a job
without one, a retry: either says a POST may have left), and one outcome:
``("answer", id, status, headers, content, line)``, ``("stopped", id)``,
``("no_space", id, folder, line or None)``, ``("unwritable", id, text)`` (the journal refused the
intent: nothing sent) or ``("failed", id, httpx error type, text)``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from ideogram_pipeline.runs.journal import Journal
from ideogram_pipeline.storage.space import NoSpaceLeft

__all__ = ["ENTRY", "Settings", "SubmitJob", "serve"]

#: How the run starts this process: ``python -c ENTRY <pipe descriptor>``.
ENTRY = "from ideogram_pipeline.runs.submit_worker import main; main()"

Line = dict[str, Any]
#: Headers about the body's encoding on the wire, which the answer's decoded body drops.
WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


@dataclass(frozen=True)
class Settings:
    base_url: str
    api_key: str
    timeout_s: float
    connections: int
    #: One per slot of the run's in-flight limit: a job never waits behind another's POST.
    threads: int


@dataclass(frozen=True)
class SubmitJob:
    """One POST and the journal lines around it (picklable: no callbacks)."""

    job_id: int
    path: str
    json_body: Any
    parts: list[Any] | None
    journal: str
    intent: Line | None
    submitted: Line


@dataclass
class _Served:
    """This process's state: its client, its journals and whether the run said stop."""

    http: httpx.Client
    reply: Callable[[tuple[Any, ...]], None]
    journals: dict[str, Journal] = field(default_factory=dict)
    stopped: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def journal(self, path: str) -> Journal:
        """The run's journal file at ``path``, held open (and locked) until this process
        ends, so that a run taking over after a kill waits for the ids still to come."""
        with self.lock:
            journal = self.journals.get(path)
            if journal is None:  # kept once open: a full disk is tried again next job
                journal = Journal.at(Path(path))
                journal.hold_open()
                self.journals[path] = journal
            return journal


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _submit(served: _Served, job: SubmitJob) -> None:
    """One job, answered whatever happens: the run waits on every job it sent."""
    try:
        _intent_post_id(served, job)
    except Exception as exc:  # a bug of ours, after the intent maybe: the run says unknown
        served.reply(("failed", job.job_id, "RemoteProtocolError", f"{type(exc).__name__}: {exc}"))


def _intent_post_id(served: _Served, job: SubmitJob) -> None:
    """Intent, POST, id, with nothing else of this process's in between."""
    if served.stopped.is_set():
        served.reply(("stopped", job.job_id))
        return
    try:
        journal = served.journal(job.journal)
        if job.intent is not None:
            line = {**job.intent, "at": _now()}
            journal.append(line)
            served.reply(("intent", job.job_id, line))
        else:
            served.reply(("sending", job.job_id))
    except NoSpaceLeft as full:
        served.reply(("no_space", job.job_id, str(full.where), None))
        return
    except OSError as exc:  # the journal cannot be written: nothing may be sent
        served.reply(("unwritable", job.job_id, str(exc)))
        return
    try:
        if job.parts is not None:
            response = served.http.post(job.path, files=job.parts)
        else:
            response = served.http.post(job.path, json=job.json_body)
    except httpx.HTTPError as exc:
        served.reply(("failed", job.job_id, type(exc).__name__, str(exc)))
        return
    submitted = None
    if response.status_code == 200:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # the run reports it
            generation_id = str(response.json()["generation_id"])
            submitted = {**job.submitted, "generation_id": generation_id, "at": _now()}
        if submitted is not None:
            try:  # money spent: the journal's reserve may take it
                journal.append(submitted, use_reserve=True)
            except NoSpaceLeft as full:  # the run may still copy the id to the store
                served.reply(("no_space", job.job_id, str(full.where), submitted))
                return
    # The body is decoded already: headers that describe its encoding on the wire would
    # have the run's httpx.Response decode it again (a gzip answer raised DecodingError).
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in WIRE_HEADERS
    ]
    served.reply(("answer", job.job_id, response.status_code, headers, response.content, submitted))


def serve(conn: Connection) -> None:
    """Read jobs until the run says it is done or is gone; then wait for the POSTs already
    made (their ids are journaled) and exit."""
    # The run stops us, after a clean stop; a closed terminal (SIGHUP) kills the run alone.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    settings: Settings = conn.recv()
    reply_lock = threading.Lock()

    def reply(message: tuple[Any, ...]) -> None:
        with reply_lock, contextlib.suppress(OSError):  # the run is gone: the journal has it
            conn.send(message)

    http = httpx.Client(
        base_url=settings.base_url,
        headers={"Api-Key": settings.api_key},
        timeout=httpx.Timeout(settings.timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=settings.connections),
        # Certificates only for https: loading the CA bundle is 50 ms of CPU at start-up.
        verify=settings.base_url.startswith("https:"),
    )
    served = _Served(http, reply)
    reply(("ready",))
    with ThreadPoolExecutor(settings.threads, thread_name_prefix="submit") as pool:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = None  # the run died: send nothing new, finish what was sent
            if message is None:
                served.stopped.set()
                break
            if message == "stop":
                served.stopped.set()
                continue
            pool.submit(_submit, served, message)
    http.close()


def main() -> None:
    """The process's entry point: its only argument is its end of the pipe."""
    serve(Connection(int(sys.argv[1])))

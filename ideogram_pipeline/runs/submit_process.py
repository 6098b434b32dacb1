"""Asynchronous submissions from a process of their own, which outlives a killed run.

A row ends ``unknown`` when the run dies between journaling a submission's intent and
journaling the generation id Ideogram answers with. In the run's own process that span is
the round trip *plus* every wait for the GIL: at 10 in flight and 0.5 s a generation,
9-14 ms at the median and 30-120 ms at p90 (Dagster importing beside the first requests,
downloads, PNG work), against 2-4 ms for a process doing nothing else. So the POSTs leave
from a process of their own (``submit_worker.py``), which appends both lines to the run's
journal (``<run>.submits.jsonl``, see ``journal.py``) around each one and hands them back
for the run to copy to the store.

It also finishes what it started. When the run's process dies (SIGKILL, the OOM killer),
its end of the pipe closes: the submitting process sends nothing new, waits for the answers
to the POSTs already on the wire, journals their ids and exits. A kill of the run alone
thus leaves no ``unknown`` row; only a kill of both (a lost machine) can, in the round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from ideogram_pipeline.ideogram.client import translate_transport_errors
from ideogram_pipeline.ideogram.stop import SendsStopped
from ideogram_pipeline.ideogram.submit_channel import ChannelGone, SubmitLines
from ideogram_pipeline.runs.submit_worker import ENTRY, Settings, SubmitJob
from ideogram_pipeline.storage.space import NoSpaceLeft

__all__ = ["SubmitProcess"]

logger = logging.getLogger(__name__)

#: How long the first submission waits for the process to be up before going without it.
START_TIMEOUT_S = 15.0


@dataclass
class _Waiting:
    future: asyncio.Future[httpx.Response]
    loop: asyncio.AbstractEventLoop
    lines: SubmitLines
    intent_written: bool = False


class SubmitProcess:
    """The run's side: start the process, send it jobs, turn its answers into responses.

    If it cannot be started, or dies, :attr:`usable` turns false and the client submits
    from threads of the run's own process, as before.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float, connections: int) -> None:
        ours, theirs = multiprocessing.Pipe()
        self._conn = ours
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", ENTRY, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # it prints nothing; its errors go to stderr
            )
        finally:
            theirs.close()
        self._conn.send(Settings(base_url, api_key, timeout_s, connections))
        self._ready = threading.Event()
        self._lost = False
        self._waiting: dict[int, _Waiting] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, name="submit-answers", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls, base_url: str, api_key: str, *, timeout_s: float, connections: int
    ) -> SubmitProcess | None:
        """A started process, or None (logged) where none can be started."""
        try:
            return cls(base_url, api_key, timeout_s=timeout_s, connections=connections)
        except OSError as exc:
            logger.info(f"submissions leave from the run's threads (no process: {exc})")
            return None

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def usable(self) -> bool:
        return not self._lost

    async def post(
        self, path: str, json_body: Any, parts: list[Any] | None, lines: SubmitLines
    ) -> httpx.Response:
        """POST through the process; raises :class:`ChannelGone` if it is not there."""
        loop = asyncio.get_running_loop()
        if not self._ready.is_set():
            ready = await asyncio.to_thread(self._ready.wait, START_TIMEOUT_S)
            if not ready:
                logger.warning("the submitting process did not start; submitting from threads")
                self._lost = True
        future: asyncio.Future[httpx.Response] = loop.create_future()
        with self._lock:
            if self._lost:
                raise ChannelGone("the submitting process is gone")
            self._next_id += 1
            job_id = self._next_id
            self._waiting[job_id] = _Waiting(future, loop, lines)
        job = SubmitJob(
            job_id, path, json_body, parts, str(lines.journal), lines.intent, lines.submitted
        )
        try:
            with self._lock:
                self._conn.send(job)
        except OSError as exc:
            with self._lock:
                self._waiting.pop(job_id, None)
            self._lost = True
            raise ChannelGone(f"the submitting process is gone ({exc})") from exc
        return await future

    def stop(self) -> None:
        """No new POST leaves from now on (each job checks before its intent)."""
        with contextlib.suppress(OSError), self._lock:
            self._conn.send("stop")

    def close(self) -> None:
        """No more jobs: the process exits once its POSTs are answered and journaled. Not
        waited for: a forced stop must not wait on a slow answer, which the process still
        journals on its own."""
        with contextlib.suppress(OSError), self._lock:
            self._conn.send(None)

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                break  # the process ended (after close) or died
            kind, *rest = message
            if kind == "ready":
                self._ready.set()
                continue
            job_id = rest[0]
            with self._lock:
                waiting = self._waiting.get(job_id) if kind == "intent" else None
                if kind != "intent":
                    waiting = self._waiting.pop(job_id, None)
            if waiting is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    waiting.loop.call_soon_threadsafe(self._settle, waiting, kind, rest[1:])
        self._lost = True
        self._ready.set()
        with self._lock:
            orphans, self._waiting = list(self._waiting.values()), {}
        for waiting in orphans:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                waiting.loop.call_soon_threadsafe(self._settle, waiting, "gone", [])
        self._conn.close()
        self._process.wait()

    @staticmethod
    def _settle(waiting: _Waiting, kind: str, rest: list[Any]) -> None:
        """On the event loop: hand written lines to the run, then end the POST's wait."""
        if waiting.future.done():
            return
        if kind == "intent":
            waiting.intent_written = True
            waiting.lines.written(rest[0])
            return
        if kind == "answer":
            status, headers, content, submitted = rest
            if submitted is not None:
                waiting.lines.written(submitted)
            waiting.future.set_result(httpx.Response(status, headers=headers, content=content))
        elif kind == "stopped":
            waiting.future.set_exception(SendsStopped("not sent: the run is stopping"))
        elif kind == "no_space":
            waiting.future.set_exception(NoSpaceLeft(rest[0]))
        elif kind == "unwritable":
            waiting.future.set_exception(OSError(f"the journal refused an intent: {rest[0]}"))
        elif kind == "failed":
            waiting.future.set_exception(_translated(_httpx_error(*rest)))
        elif waiting.intent_written:  # the process died mid-POST: only Ideogram knows
            waiting.future.set_exception(
                _translated(httpx.RemoteProtocolError("the submitting process died"))
            )
        else:
            waiting.future.set_exception(ChannelGone("the submitting process died"))


def _httpx_error(error_type: str, text: str) -> httpx.HTTPError:
    """The httpx error the process's POST raised, rebuilt by name."""
    kind = getattr(httpx, error_type, None)
    if isinstance(kind, type) and issubclass(kind, httpx.HTTPError):
        with contextlib.suppress(TypeError):
            return kind(text)
    return httpx.RemoteProtocolError(f"{error_type}: {text}")


def _translated(error: httpx.HTTPError) -> Exception:
    """The client's error for ``error`` on a paid request (``translate_transport_errors``):
    a failure after sending is ``ResponseLost``, before it a retryable ``TransportError``."""
    try:
        with translate_transport_errors(paid_request=True):
            raise error
    except Exception as translated:
        return translated
    raise AssertionError("unreachable")

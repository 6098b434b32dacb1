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
import subprocess
import sys
import threading
import time
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
    job_id: int
    future: asyncio.Future[httpx.Response]
    loop: asyncio.AbstractEventLoop
    lines: SubmitLines
    #: The process said its POST may have left (its intent is written, or it is sending).
    sent: bool = False


class SubmitProcess:
    """The run's side: start the process, send it jobs, turn its answers into responses.

    If it cannot be started, or dies, :attr:`usable` turns false and the client submits
    from threads of the run's own process, as before.
    """

    def __init__(
        self, base_url: str, api_key: str, *, timeout_s: float, connections: int, threads: int
    ) -> None:
        ours, theirs = multiprocessing.Pipe()
        self._conn = ours
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", ENTRY, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # it prints nothing; its errors go to stderr
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            self._conn.send(Settings(base_url, api_key, timeout_s, connections, threads))
        except BaseException:
            self._process.kill()
            self._process.wait()
            ours.close()
            raise
        self._ready = threading.Event()
        self._lost = False
        #: Jobs until their outcome is settled on the event loop (cancelled ones included).
        self._waiting: dict[int, _Waiting] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, name="submit-answers", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls, base_url: str, api_key: str, *, timeout_s: float, connections: int, threads: int
    ) -> SubmitProcess | None:
        """A started process, or None (logged) where none can be started."""
        try:
            return cls(
                base_url, api_key, timeout_s=timeout_s, connections=connections, threads=threads
            )
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
            self._waiting[job_id] = _Waiting(job_id, future, loop, lines)
        job = SubmitJob(
            job_id, path, json_body, parts, str(lines.journal), lines.intent, lines.submitted
        )
        try:
            with self._lock:
                self._conn.send(job)
        except Exception as exc:  # nothing reached the process: the threads send instead
            with self._lock:
                self._waiting.pop(job_id, None)
            if isinstance(exc, OSError):
                self._lost = True
            else:
                logger.warning(f"a submission could not be handed to the process: {exc!r}")
            raise ChannelGone(f"the submitting process is gone ({exc})") from exc
        return await future

    async def drained(self, timeout_s: float) -> bool:
        """Wait until every job sent has its outcome on the event loop, its journal lines
        handed to the run (a job whose caller was cancelled included): until then the
        process may still append to the run's journal. False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._waiting:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

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
        ended = "gone"
        try:
            self._read_answers()
        except Exception:
            # A bug of ours, or an answer that cannot be read: the process may still be
            # sending, and what it says now would go unheard. It is stopped, and every job
            # waiting is taken as sent (its row ends unknown), never handed to the threads.
            logger.exception("reading the submitting process's answers failed")
            ended = "unheard"
            self._process.kill()
        finally:
            self._lost = True
            self._ready.set()
            with self._lock:  # outcomes already on their way to the loop settle first
                orphans = list(self._waiting.values())
                self._conn.close()
            self._process.wait()
            for waiting in orphans:
                self._settle_soon(waiting, ended, [])

    def _read_answers(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                return  # the process ended (after close) or died
            kind, *rest = message
            if kind == "ready":
                self._ready.set()
                continue
            with self._lock:
                waiting = self._waiting.get(rest[0])
            if waiting is not None:
                self._settle_soon(waiting, kind, rest[1:])

    def _settle_soon(self, waiting: _Waiting, kind: str, rest: list[Any]) -> None:
        try:
            waiting.loop.call_soon_threadsafe(self._settle, waiting, kind, rest)
        except RuntimeError:  # the loop is closed: nobody waits
            self._forget(waiting)

    def _forget(self, waiting: _Waiting) -> None:
        with self._lock:
            self._waiting.pop(waiting.job_id, None)

    def _settle(self, waiting: _Waiting, kind: str, rest: list[Any]) -> None:
        """On the event loop: hand written lines to the run (even when its caller was
        cancelled: they are in the journal, so the store must have them), then end the
        POST's wait."""
        if kind in ("intent", "sending"):
            waiting.sent = True
            if kind == "intent":
                waiting.lines.written(rest[0])
            return
        try:
            if kind in ("answer", "no_space") and rest[-1] is not None:
                waiting.lines.written(rest[-1])  # the generation id
            if not waiting.future.done():
                self._outcome(waiting, kind, rest)
        except Exception as exc:  # never leave the POST's caller waiting
            logger.exception("a submission's answer could not be handed to the run")
            if not waiting.future.done():
                waiting.future.set_exception(_translated(httpx.DecodingError(str(exc))))
        finally:
            self._forget(waiting)

    @staticmethod
    def _outcome(waiting: _Waiting, kind: str, rest: list[Any]) -> None:
        future = waiting.future
        if kind == "answer":
            status, headers, content, _submitted = rest
            future.set_result(httpx.Response(status, headers=headers, content=content))
        elif kind == "stopped":
            future.set_exception(SendsStopped("not sent: the run is stopping"))
        elif kind == "no_space":
            future.set_exception(NoSpaceLeft(rest[0]))
        elif kind == "unwritable":
            future.set_exception(OSError(f"the journal refused an intent: {rest[0]}"))
        elif kind == "failed":
            future.set_exception(_translated(_httpx_error(*rest)))
        elif waiting.sent or kind == "unheard":  # died mid-POST: only Ideogram knows
            future.set_exception(
                _translated(httpx.RemoteProtocolError("the submitting process died"))
            )
        else:
            future.set_exception(ChannelGone("the submitting process died"))


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

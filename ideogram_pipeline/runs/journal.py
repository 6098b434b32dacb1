"""The ledger's write-ahead journal: an intent or a generation id durable in microseconds.

The ledger (``ledger.py``) writes each event as one object through the store: a file
rename locally, a PUT on S3, run in a thread pool. That is milliseconds at best, and while
it waits the process can die with Ideogram holding (and billing) a generation whose id we
never wrote down. So the two events that guard money, the *intent* (before a request
leaves) and the *generation id* (the moment Ideogram accepts a submission), are first
appended to a local journal on the submitting task's own path, with one ``write(2)`` to a
file opened ``O_APPEND`` (no thread, no queue; the page cache makes it survive the process
being killed), and then copied to the store's ledger in the background (the replica). On a
local root the journal lies in the root itself and is the ledger while the run lasts:
replicas are made at the run's end for the rows it leaves open only, and the journal is
flushed with ``fdatasync`` every 0.2 s meanwhile (``bookkeeping.py``).

A run's journal is a JSON-lines file, ``<root>/journal/<batch>/<run>.jsonl`` for a local
root, plus ``<run>.submits.jsonl`` beside it, where the run's submitting process
(``submit_process.py``) appends the intent and the generation id around each POST; for an
S3 root, the same under this machine's state folder
(``$XDG_STATE_HOME/ideogram-pipeline/journal/<root digest>/``), since the journal must be
local to be fast. The next run on the machine reads the journals it finds, copies what
their replicas missed into the store, and deletes them; a run that ends normally deletes
its own once every replica is written. A torn last line (killed mid-write) is ignored: its
event never completed, exactly as if the kill came a moment earlier.

A full disk must not cost an answer already paid for. A run holds a small reserve beside
its journals (``.reserve``, :class:`~ideogram_pipeline.storage.space.SpaceReserve`) from
its first append; when an append finds the disk full, an intent fails at once (the request
is then never sent), while any other event (a generation id, an answer, a withdrawal)
frees the reserve and is written into the space it gave back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ideogram_pipeline.storage import LocalStore, ObjectStore
from ideogram_pipeline.storage.space import NoSpaceLeft, SpaceReserve, no_space_left

__all__ = ["JOURNAL_PREFIX", "RESERVE_NAME", "Journal", "journal_directory"]

logger = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal"
#: The space held aside for answers when the disk fills (one per journal directory).
RESERVE_NAME = ".reserve"


def journal_directory(store: ObjectStore) -> Path:
    """Where the journals of ``store``'s batches live: beside a local root, on this machine
    for a remote one."""
    if isinstance(store, LocalStore):
        return store.path / JOURNAL_PREFIX
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    digest = hashlib.sha256(store.root.encode("utf-8")).hexdigest()[:16]
    return state / "ideogram-pipeline" / JOURNAL_PREFIX / digest


class Journal:
    """One run's append-only journal for one batch, plus the journals earlier runs left."""

    def __init__(self, directory: Path, batch: str, name: str | None = None) -> None:
        self.folder = directory / batch
        self.path = self.folder / (name or f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl")
        self.reserve = SpaceReserve(directory / RESERVE_NAME)
        self._fd: int | None = None
        # Submit threads append too (client.py): one appender at a time, for the few
        # microseconds of a write, so a line cut short by a full disk is finished (or
        # ended) before another starts.
        self._lock = threading.Lock()
        self._torn = False  # an append was cut short by a full disk: end its line first
        #: Set once an append found the disk full: from then on only the answers to
        #: requests already sent are written (into the reserve's space).
        self.full: NoSpaceLeft | None = None

    @classmethod
    def at(cls, path: Path) -> Journal:
        """The journal file ``path`` (of a batch's folder), opened by another process."""
        return cls(path.parent.parent, path.parent.name, path.name)

    @property
    def submits_path(self) -> Path:
        """Where this run's submitting process journals the POSTs it makes."""
        return self.path.with_suffix(".submits.jsonl")

    def append(self, body: dict[str, Any], *, use_reserve: bool = False) -> None:
        """Make ``body`` durable against a process kill: one ``write(2)``, no queue (safe
        to call from several threads at once).

        On a full disk, :class:`~ideogram_pipeline.storage.space.NoSpaceLeft` naming the
        journal's folder (and :attr:`full` is set). With ``use_reserve`` (an event about
        money already spent) the reserve is freed and the write made in its space; without
        it (an intent) nothing is written once the disk has been found full, so no new
        request leaves on the strength of the answers' reserve.
        """
        line = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._lock:
            if self.full is not None and not use_reserve:
                raise NoSpaceLeft(self.folder)
            try:
                if self._fd is None:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self._hold_reserve(use_reserve=use_reserve)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._write_all(self._fd, b"\n" + line if self._torn else line, use_reserve)
            except OSError as exc:
                if (full := no_space_left(exc, self.folder)) is None:
                    raise
                self.full = self.full or full
                raise full from exc

    def _hold_reserve(self, *, use_reserve: bool) -> None:
        """Set the reserve aside before the first event; no room for it means the disk is
        full (an event that may use the reserve is still tried without one)."""
        try:
            self.reserve.hold()
        except NoSpaceLeft as full:
            self.full = self.full or full
            if not use_reserve:
                raise

    def _write_all(self, fd: int, line: bytes, use_reserve: bool) -> None:
        """One ``write(2)`` as a rule; a full disk can make it short, and the rest follows
        once the reserve is freed (or the line is left torn and the next one starts anew)."""
        rest = memoryview(line)
        while rest:
            try:
                written = os.write(fd, rest)
            except OSError as exc:
                full = no_space_left(exc, self.folder)
                if full is not None and use_reserve and self.reserve.release():
                    self.full = self.full or full
                    continue
                self._torn = self._torn or len(rest) < len(line)
                raise
            rest = rest[written:]
        self._torn = False

    def sync(self) -> None:
        """Flush the journal to the disk (``fdatasync``): a process kill never needed it,
        a power cut does. Called behind the appends, never on a sending path."""
        with self._lock:  # a copy of the descriptor: appends never wait for the disk
            fd = None if self._fd is None else os.dup(self._fd)
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # nothing submitted from a process yet
            submits = os.open(self.submits_path, os.O_RDONLY)
            try:
                os.fdatasync(submits)
            finally:
                os.close(submits)

    def hold_open(self) -> None:
        """Open the file and hold an exclusive lock on it for as long as this process lives
        (a submitting process does): the lock says "answers may still come" to a run that
        wants to read it (:meth:`wait_for_writers`); the kernel drops it however we end."""
        with self._lock:
            if self._fd is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._hold_reserve(use_reserve=False)  # NoSpaceLeft: no intent can be written
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError as exc:  # no locks here (some network filesystems): appends work
                logger.warning(
                    f"journal {self.path} cannot be locked ({exc.strerror or exc}): a run "
                    "taking over after a kill will not wait for its last answers"
                )

    @staticmethod
    def wait_for_writers(path: Path, timeout_s: float) -> bool:
        """Wait until no process holds ``path`` open for writing (:meth:`hold_open`): a
        killed run's submitting process journals the ids of the POSTs it had made before
        it lets go. False if it still held on after ``timeout_s`` (or, where the
        filesystem has no locks, if the file changed within ``timeout_s``: read it, keep it)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone (nothing to wait for) or unreadable (read() will say)
            return True
        try:
            deadline = time.monotonic() + timeout_s
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return False
                    if not told:
                        logger.warning(
                            f"waiting up to {timeout_s:.0f} s for a killed run's submissions "
                            f"to be answered ({path.name})"
                        )
                        told = True
                    time.sleep(0.05)
                except OSError:  # no locks here: a file quiet for timeout_s has no writer
                    return time.time() - os.fstat(fd).st_mtime >= timeout_s
        finally:
            os.close(fd)

    def earlier(self) -> list[Path]:
        """Journals other runs left for this batch (killed before they could delete them)."""
        if not self.folder.is_dir():
            return []
        own = {self.path, self.submits_path}
        return sorted(p for p in self.folder.glob("*.jsonl") if p not in own)

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        """The events of one journal; a torn last line is skipped."""
        events: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_bytes().splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # killed mid-write: that event never happened
        return events

    def close(self) -> None:
        with self._lock:  # never while an append or a sync takes its copy of the descriptor
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def remove(self, paths: list[Path]) -> None:
        """Delete journals whose every event is in the store's ledger (and this run's own)."""
        self.close()
        for path in [*paths, self.path, self.submits_path]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

"""Running out of disk space: recognising it, and a reserve kept for when it happens.

A full disk is not an outage. Waiting it out (as :mod:`~ideogram_pipeline.runs.retrying`
does for a restarting S3 endpoint) only spends a minute per image while more paid answers
pile up with nowhere to go, so every writer turns ``ENOSPC`` (and a full quota) into one
:class:`NoSpaceLeft` naming the place, and nothing retries it.

The error arrives in three shapes: an ``OSError`` with ``errno`` ``ENOSPC``/``EDQUOT`` from
Python's own file calls, the same wrapped by a store, and the Rust text ``No space left on
device (os error 28)`` inside a Delta Lake error (the history tables); :func:`no_space_left`
knows all three.

:class:`SpaceReserve` is a ballast file: a run holds a little space aside for its journal,
and gives it back the moment the disk is full, so the answers to requests already sent
(paid) can still be written down even though nothing else fits any more.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ideogram_pipeline.storage.base import StorageError

__all__ = ["RESERVE_BYTES", "NoSpaceLeft", "SpaceReserve", "no_space_left"]

#: Space a run keeps aside for its journal. An answer is a few hundred bytes per image,
#: and once the disk is full only the rows already in flight (a few dozen) still answer.
RESERVE_BYTES = 256 * 1024

_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: How the condition reads when it comes through a library that keeps only the text
#: (deltalake's Rust object store: "No space left on device (os error 28)").
_TEXTS = ("no space left on device", "(os error 28)", "disk quota exceeded", "(os error 122)")


class NoSpaceLeft(StorageError):
    """The disk under ``where`` is full: nothing more can be written there until space is
    freed. Never retried."""

    def __init__(self, where: str | os.PathLike[str]) -> None:
        self.where = str(where)
        super().__init__(f"no space left on device at {self.where}")


def no_space_left(exc: BaseException, where: str | os.PathLike[str]) -> NoSpaceLeft | None:
    """``exc`` as a :class:`NoSpaceLeft` naming ``where`` if it (or what caused it) means
    the disk is full; None for any other error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NoSpaceLeft):
            return current
        if isinstance(current, OSError) and current.errno in _ERRNOS:
            return NoSpaceLeft(where)
        text = str(current).lower()
        if any(marker in text for marker in _TEXTS):
            return NoSpaceLeft(where)
        current = current.__cause__ or current.__context__
    return None


class SpaceReserve:
    """A file of ``size`` bytes held at ``path`` and deleted to free that space at once.

    The blocks are allocated (``posix_fallocate``), not a sparse file, so deleting it
    really gives them back. Several runs on one root share the file: whichever hits a full
    disk first releases it; each run holds it again when it starts.
    """

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size

    def hold(self) -> None:
        """Make sure the reserve exists; :class:`NoSpaceLeft` if the disk cannot spare it."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size >= self.size:
                return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                _allocate(fd, self.size)
            finally:
                os.close(fd)
        except OSError as exc:
            self.release()  # a partial reserve is no reserve: give back what it took
            if (full := no_space_left(exc, self.path.parent)) is not None:
                raise full from exc
            # Any other refusal (a filesystem that allocates nothing ahead): the run goes
            # on without a reserve, as before there was one, rather than not at all.

    def release(self) -> bool:
        """Delete the reserve; whether there was one to free."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def _allocate(fd: int, size: int) -> None:
    """Really allocate ``size`` bytes: ``posix_fallocate``, or zeros written where the
    filesystem does not support it."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.lseek(fd, 0, os.SEEK_SET)
        chunk = bytes(64 * 1024)
        for start in range(0, size, len(chunk)):
            os.write(fd, chunk[: size - start])

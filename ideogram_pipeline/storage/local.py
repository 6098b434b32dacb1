"""A folder on local disk as an object store (the default root, ``./data``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ideogram_pipeline.storage.base import (
    ObjectExists,
    ObjectInfo,
    StorageError,
    StoragePreflightError,
)
from ideogram_pipeline.storage.space import no_space_left

__all__ = ["LocalStore"]

#: Deletions of at least this many files are spread over DELETE_THREADS threads.
PARALLEL_DELETE_FROM = 64
DELETE_THREADS = 8


class LocalStore:
    """Objects are files under ``root``; writes go to a temporary file and are renamed in.

    Rename is atomic on one filesystem, so a reader (DuckDB globbing ``*.parquet``) never sees
    a half-written file: temporary files start with a dot and end in ``.tmp``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)

    def _path(self, key: str) -> Path:
        path = (self.path / key).resolve()
        if self.path not in path.parents:
            raise StorageError(f"key {key!r} escapes the storage root")
        return path

    def uri(self, key: str) -> str:
        # Joined as strings: a history connection asks for one per metadata file.
        return os.path.join(self.root, key)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        create_only: bool = False,
        cache_control: str | None = None,
    ) -> None:
        try:
            self._put(key, data, create_only=create_only)
        except OSError as exc:
            # A full disk is one clear error naming the root, never retried (space.py).
            if (full := no_space_left(exc, self.root)) is None:
                raise
            raise full from exc

    def _put(self, key: str, data: bytes, *, create_only: bool) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if create_only:
                try:
                    os.link(tmp_name, target)  # fails if the target exists: create-only
                except FileExistsError:
                    if target.read_bytes() != data:
                        raise ObjectExists(f"{key} already exists with different bytes") from None
            else:
                os.replace(tmp_name, target)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"no object at {key}") from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            stat = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key=key, size=stat.st_size, last_modified=stat.st_mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.path / prefix
        if prefix.endswith("/") and not base.is_dir():
            return  # a missing folder: nothing under it (and no walk of its parent)
        start = base if base.is_dir() else base.parent
        if not start.exists() or (start != self.path and self.path not in start.parents):
            return  # a root not made yet: never list the folder it would be made in
        for key, entry in _walk(str(start), self.root):
            if key.startswith(prefix):
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue  # deleted while we listed (as on S3: not listed)
                yield ObjectInfo(key=key, size=stat.st_size, last_modified=stat.st_mtime)

    def delete(self, keys: Iterable[str]) -> None:
        """Delete ``keys`` (missing ones are not an error). A run prunes its ledger's three
        files per row in one call after each history flush, the last one after its last
        image: one unlink after another took 0.3-1.4 s for 500 rows on a busy disk, about
        half that from several threads (unlink waits on the filesystem, not the GIL)."""
        keys = list(keys)
        if len(keys) < PARALLEL_DELETE_FROM:
            for key in keys:
                self._unlink(key)
            return
        with ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="local-delete") as pool:
            list(pool.map(self._unlink, keys))

    def _unlink(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def sweep_temporary_files(self, older_than_s: float = 3600.0) -> int:
        """Remove temporary files a killed writer left behind (never listed, but they take
        space); young ones may belong to a live writer in another process and stay."""
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.path.rglob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def preflight(self) -> None:
        # A probe of its own: two runs starting together on one root must not read or
        # delete each other's (a shared name failed one of them with "no object").
        probe = f".preflight/{uuid.uuid4().hex}"
        in_the_way = _file_in_the_way(self.path)
        if in_the_way == self.path:
            raise StoragePreflightError(
                f"storage root {self.root} is a file, not a folder: point IDEOGRAM_STORAGE at "
                "a folder (it is made if missing), or move the file away"
            )
        if in_the_way is not None:
            raise StoragePreflightError(
                f"storage root {self.root} cannot be made: {in_the_way} is a file, not a "
                "folder; point IDEOGRAM_STORAGE elsewhere, or move the file away"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.put_bytes(probe, b"ok")
            if self.get_bytes(probe) != b"ok":
                raise StoragePreflightError(f"storage root {self.root} did not read back a write")
            self.delete([probe])
            self.sweep_temporary_files()
        except OSError as exc:
            raise StoragePreflightError(
                f"storage root {self.root} is not writable: {exc.strerror or exc}"
            ) from exc


def _file_in_the_way(path: Path) -> Path | None:
    """The root itself or its nearest existing ancestor, when that is not a folder.

    ``mkdir`` would only say "File exists" or "Not a directory", which sends a person
    looking for permissions rather than at the file that is there.
    """
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _walk(folder: str, root: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """``(key, entry)`` of every file under ``folder``, temporary files left out.

    ``os.scandir`` and plain strings, not ``Path`` objects: history queries list every
    metadata file, and this is about half the time of ``os.walk`` with paths.
    """
    pending = [folder]
    while pending:
        current = pending.pop()
        prefix = current[len(root) :].lstrip(os.sep).replace(os.sep, "/")
        prefix = f"{prefix}/" if prefix else ""
        try:
            with os.scandir(current) as entries:
                listed = sorted(entries, key=lambda entry: entry.name)
        except FileNotFoundError:
            continue  # removed while we listed
        folders = []
        for entry in listed:
            if entry.is_dir():
                if not entry.is_symlink():  # as os.walk: linked folders are not entered
                    folders.append(entry.path)
            elif not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                yield prefix + entry.name, entry
        pending.extend(reversed(folders))

"""The object-store interface shared by the local folder and S3.

The engine, the metadata writer, the Dagster assets and the CLI talk only to
:class:`ObjectStore`, so a storage root is a setting, not a code path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["ObjectExists", "ObjectInfo", "ObjectStore", "StorageError", "StoragePreflightError"]


class StorageError(Exception):
    """A storage operation failed (after the store's own retries)."""


class StoragePreflightError(StorageError):
    """The storage root is unusable (missing bucket, bad credentials, no write permission)."""


class ObjectExists(StorageError):
    """A create-only write found a different object already at that key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float  # POSIX seconds


@runtime_checkable
class ObjectStore(Protocol):
    """Keys are '/'-separated paths relative to the storage root, e.g. ``images/ab/cd.png``."""

    #: The root as a user writes it: a local path or ``s3://bucket/prefix``.
    root: str

    def uri(self, key: str) -> str:
        """Where DuckDB and people find ``key``: an absolute path or an ``s3://`` URL."""
        ...

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
        """Write ``data`` whole and atomically: readers see the old state or all of it.

        With ``create_only`` an existing object with identical bytes counts as success
        (a retry of our own write); different bytes raise :class:`ObjectExists`.
        """
        ...

    def get_bytes(self, key: str) -> bytes: ...

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size and time, or ``None`` when it does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, keys: Iterable[str]) -> None:
        """Delete keys; missing keys are not an error (deletion is idempotent)."""
        ...

    def preflight(self) -> None:
        """Prove the root is writable and readable before any money is spent.

        Raises :class:`StoragePreflightError` naming the problem.
        """
        ...

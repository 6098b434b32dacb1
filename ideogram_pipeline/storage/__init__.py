"""Image and metadata storage: one interface over a local folder or S3."""

from __future__ import annotations

from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectStore,
    StorageError,
    StoragePreflightError,
)
from ideogram_pipeline.storage.local import LocalStore
from ideogram_pipeline.storage.space import NoSpaceLeft

__all__ = [
    "LocalStore",
    "NoSpaceLeft",
    "ObjectExists",
    "ObjectInfo",
    "ObjectStore",
    "StorageError",
    "StoragePreflightError",
    "open_store",
]


def open_store(settings: Settings) -> ObjectStore:
    """The store for ``settings.storage``: ``s3://bucket/prefix`` or a local path."""
    if settings.is_s3:
        from ideogram_pipeline.storage.s3 import S3Store  # boto3 only when needed

        return S3Store.from_settings(settings, sse=settings.s3_sse_spec)
    return LocalStore(settings.storage)

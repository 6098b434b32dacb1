"""Keeping one generated image: download it at once (Ideogram's links expire), stamp its
text chunks, store it create-only, check what landed; the record says how it ended."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import replace

from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.ideogram.client import LAST_RETRY_ERROR, IdeogramClient
from ideogram_pipeline.ideogram.errors import IdeogramError, LinkExpired
from ideogram_pipeline.images.contact_sheets import SheetTiles
from ideogram_pipeline.images.png_metadata import prepare_for_storage
from ideogram_pipeline.runs.ledger import attempt_day
from ideogram_pipeline.runs.pools import RunPools
from ideogram_pipeline.runs.retrying import STORAGE_RETRY, StorageRetry, retry_storage
from ideogram_pipeline.storage import ObjectStore, StorageError
from ideogram_pipeline.storage.base import ObjectExists
from ideogram_pipeline.storage.keys import image_key
from ideogram_pipeline.storage.public_urls import public_url
from ideogram_pipeline.storage.space import NoSpaceLeft, no_space_left

__all__ = ["IMAGE_CACHE_CONTROL", "ImageKeeper", "StorageUnavailable"]

IMAGE_CACHE_CONTROL = "public, max-age=31536000, immutable"


class StorageUnavailable(Exception):
    """The store kept failing for an image we paid for and downloaded."""


class ImageKeeper:
    """Turns a safe image's record (status ``stored`` if all goes well) into its outcome."""

    def __init__(
        self,
        client: IdeogramClient,
        store: ObjectStore,
        pools: RunPools,
        *,
        batch_key: str,
        on_retry: Callable[[BaseException], None],
        retry: StorageRetry = STORAGE_RETRY,
        on_no_space: Callable[[NoSpaceLeft], None] | None = None,
        tiles: SheetTiles | None = None,
        public_base_url: str | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.pools = pools
        self.batch_key = batch_key
        self.on_retry = on_retry
        self.retry = retry
        self.on_no_space = on_no_space
        #: Contact-sheet thumbnails, made here while other requests wait on Ideogram so the
        #: sheet drawn after the last image need not read these images back.
        self.tiles = tiles
        #: ``IDEOGRAM_PUBLIC_BASE_URL``: the image's public URL goes into its JSON chunk.
        self.public_base_url = public_base_url
        #: Set once the store is full: later images are not even tried (each would only
        #: take space the journal's answers need), and go to the next run from the ledger.
        self.full: NoSpaceLeft | None = None
        # Downloads start as soon as a generation returns; this only bounds memory.
        self.download_slots = asyncio.Semaphore(max(client.limiter.max_images * 2, 4))

    async def keep(self, record: GenerationRecord, url: str) -> GenerationRecord:
        """Download ``url`` and store it; the record as it ended (stored or failed)."""
        try:
            if self.full is not None:
                raise StorageUnavailable(str(self.full))
            async with self.download_slots:
                data, download_attempts = await self.client.download(url)
                # The key is known before the upload, so the JSON chunk can carry the
                # image's public URL (None without a public base).
                key = image_key(record.id, attempt_day(record.attempt_id or ""))
                record = replace(record, public_url=public_url(self.public_base_url, key))
                # The perceptual hash comes from the worker process while the image is
                # stored (fingerprinting.py): it goes in the record, not in the file.
                phash = asyncio.ensure_future(self.pools.fingerprints.phash(data))
                try:
                    # Text chunks in, download sha256 recorded (png_metadata.py), and the
                    # stored bytes' checksum: off the event loop.
                    record, data, digest = await self.pools.run(
                        self.pools.cpu, _prepare, data, record, self.batch_key
                    )
                except BaseException:
                    phash.cancel()
                    raise
            try:
                data, digest = await self._store_with_retries(key, data, digest, record)
                if self.tiles is not None and self.tiles.wanted(record.row, record.image_index):
                    await self.pools.run(self.pools.cpu, self.tiles.add, key, data)
                record = replace(record, phash=await phash)
            finally:
                phash.cancel()  # a no-op once done; an image not stored needs no hash
        except LinkExpired as exc:
            outcome = replace(
                record,
                status="failed",
                failure_kind="expired",
                error=f"row {record.row}: image link expired before download: {exc}",
            )
        except IdeogramError as exc:
            outcome = replace(
                record,
                status="failed",
                failure_kind="download",
                error=f"row {record.row}: download failed after {exc.attempts} attempt(s): {exc}",
            )
        except StorageUnavailable as exc:  # paid and downloaded: the ledger keeps the URL
            outcome = replace(
                record,
                status="failed",
                failure_kind="storage",
                error=f"row {record.row}: storing the image failed ({exc}); the next run "
                "stores it from the ledger without paying again while its link is valid",
            )
        else:
            outcome = replace(
                record,
                status="stored",
                sha256=digest,
                size_bytes=len(data),
                image_key=key,
                stored_uri=self.store.uri(key),
                attempts=(record.attempts or 0) + download_attempts - 1,
            )
        if outcome.status != "stored":
            outcome = replace(outcome, public_url=None)  # nothing stored, nothing to serve
        return replace(outcome, last_error=LAST_RETRY_ERROR.get())

    async def _store_with_retries(
        self, key: str, data: bytes, digest: str, record: GenerationRecord
    ) -> tuple[bytes, str]:
        """Storage outages (an S3 endpoint restarting) are waited out with backoff: the
        image is paid for and in memory, so giving up early would waste it. A full disk is
        not waited out: it is reported (``on_no_space``) and the image left to the ledger.
        Any other error is a bug and propagates at once. Returns the bytes stored and their
        SHA-256."""
        try:
            return await retry_storage(
                lambda: self.pools.run(self.pools.io, self._store_image, key, data, digest, record),
                policy=self.retry,
                on_retry=self.on_retry,
            )
        except (StorageError, OSError) as exc:
            if (full := no_space_left(exc, self.store.root)) is not None:
                self.full = self.full or full
                if self.on_no_space is not None:
                    self.on_no_space(full)
                raise StorageUnavailable(str(full)) from exc
            raise StorageUnavailable(str(exc)) from exc

    def _store_image(
        self, key: str, data: bytes, digest: str, record: GenerationRecord
    ) -> tuple[bytes, str]:
        try:
            self._put_image(key, data, digest, record)
        except ObjectExists:
            # The key is this attempt's image (record id: batch, row key, attempt, index),
            # stored by the run a kill stopped before it recorded it. Its text chunks may
            # name another line (the row moved in the file since): it is kept as it is.
            kept = self.store.get_bytes(key)
            return kept, hashlib.sha256(kept).hexdigest()
        return data, digest

    def _put_image(self, key: str, data: bytes, digest: str, record: GenerationRecord) -> None:
        self.store.put_bytes(
            key,
            data,
            content_type="image/png",
            cache_control=IMAGE_CACHE_CONTROL,
            create_only=True,
            metadata={
                "record-id": record.id,
                "seed": str(record.seed),
                "model": record.model or "",
                "batch": self.batch_key,
                "sha256": digest,
            },
        )
        info = self.store.head(key)
        if info is None or info.size != len(data):
            raise StorageError(f"stored object {key} does not match the downloaded bytes")


def _prepare(
    data: bytes, record: GenerationRecord, batch: str
) -> tuple[GenerationRecord, bytes, str]:
    """The record with its download fingerprints, the bytes to store (see
    :func:`prepare_for_storage`) and their SHA-256."""
    columns = record.as_row()
    stored = prepare_for_storage(data, columns, batch)
    fingerprinted = replace(record, download_sha256=columns["download_sha256"])
    return fingerprinted, stored, hashlib.sha256(stored).hexdigest()

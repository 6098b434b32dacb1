"""Reference images named by a batch: found, checked and stored once before anything is sent.

A reference cell names images as a designer has them: a path relative to the batch file,
an absolute path, an ``s3://`` URI inside the storage root, or the id (or a unique prefix)
of a stored record, so an image the pipeline made can be the next batch's character.

Resolution runs when the batch runs (not when it is parsed: the files may live on S3, ids
need the history), and turns each row's
:attr:`~ideogram_pipeline.ideogram.generation.GenerationRequest.reference_sources` into
:class:`~ideogram_pipeline.ideogram.references.ReferenceImage` values whose bytes are
stored under ``<root>/references/<sha256>.<ext>`` (content-addressed: stored once however
many rows use them). From then on the request is sent from those stored bytes, so a file
that vanishes or changes after this point changes nothing; one that is gone *by* this
point makes the row ``rejected`` with its name, and nothing is paid.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.ideogram.references import (
    COLUMNS,
    ReferenceImage,
    Role,
    limit_errors,
    sniff_image,
)
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore
from ideogram_pipeline.storage.base import StorageError

__all__ = ["ReferenceError", "resolve_references"]

#: A record id or prefix as people paste it: hex, at least 8 digits (ids are 32).
_ID_RE = re.compile(r"[0-9a-f]{8,32}")


class ReferenceError(ValueError):
    """One reference cannot be used; the message names it and says why."""


def resolve_references(batch: Batch, settings: Settings, store: ObjectStore) -> Batch:
    """``batch`` with every row's reference images read, checked and stored; a row whose
    references fail becomes a :class:`RejectedRow` naming the column."""
    if not any(r.reference_sources for r in batch.requests):
        return batch
    resolver = _Resolver(batch, settings, store)
    rows = tuple(
        resolver.resolve(row)
        if isinstance(row, GenerationRequest) and row.reference_sources
        else row
        for row in batch.rows
    )
    return replace(batch, rows=rows)


class _Resolver:
    def __init__(self, batch: Batch, settings: Settings, store: ObjectStore) -> None:
        self.base = Path(batch.source).resolve().parent
        self.settings = settings
        self.store = store
        self._record_keys: dict[str, str] | None = None

    def resolve(self, request: GenerationRequest) -> GenerationRequest | RejectedRow:
        loaded: dict[Role, list[bytes]] = {}
        roles: list[Role] = []
        for role_name, text in request.reference_sources:
            role: Role = role_name  # type: ignore[assignment]
            try:
                data = self._read(text)
            except ReferenceError as problem:
                return _rejected(request, role, f"{text!r}: {problem}")
            loaded.setdefault(role, []).append(data)
            roles.append(role)
        errors = limit_errors(loaded)
        if errors:
            role, reason = errors[0]
            return _rejected(request, role, reason)
        images: list[ReferenceImage] = []
        for role in dict.fromkeys(roles):
            for data in loaded[role]:
                images.append(self._store(role, data))
        return replace(request, references=tuple(images), reference_sources=())

    def _read(self, text: str) -> bytes:
        if text.startswith("s3://"):
            return self._read_uri(text)
        path = Path(text).expanduser()
        path = path if path.is_absolute() else self.base / path
        if path.is_file():
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ReferenceError(f"cannot be read ({exc.strerror})") from exc
        if _ID_RE.fullmatch(text.lower()) and "/" not in text:
            return self._read_record(text.lower())
        raise ReferenceError(f"no such file (looked for {path})")

    def _read_uri(self, uri: str) -> bytes:
        root = self.store.root.rstrip("/") + "/"
        if not uri.startswith(root):
            raise ReferenceError(f"is outside the storage root {root}")
        return self._get(uri[len(root) :])

    def _read_record(self, prefix: str) -> bytes:
        keys = self._records()
        matches = sorted(record_id for record_id in keys if record_id.startswith(prefix))
        if not matches:
            raise ReferenceError("is neither a file nor the id of a stored image")
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:3])
            raise ReferenceError(f"matches {len(matches)} stored images ({shown}...); longer")
        return self._get(keys[matches[0]])

    def _records(self) -> dict[str, str]:
        """Id -> image key of every stored image (one history query per batch)."""
        if self._record_keys is None:
            from ideogram_pipeline import history

            con = history.connect(self.settings, self.store)
            try:
                found = con.execute(
                    "SELECT id, image_key FROM generations "
                    "WHERE status = 'stored' AND image_key IS NOT NULL"
                ).fetchall()
            finally:
                con.close()
            self._record_keys = {str(record_id): str(key) for record_id, key in found}
        return self._record_keys

    def _get(self, key: str) -> bytes:
        try:
            return self.store.get_bytes(key)
        except StorageError as exc:
            raise ReferenceError(f"cannot be read from the storage root: {exc}") from exc

    def _store(self, role: Role, data: bytes) -> ReferenceImage:
        sniffed = sniff_image(data)
        assert sniffed is not None  # limit_errors refused anything else
        media_type, extension = sniffed
        image = ReferenceImage(role, hashlib.sha256(data).hexdigest(), extension)
        if self.store.head(image.key) is None:
            self.store.put_bytes(image.key, data, content_type=media_type, create_only=True)
        return image


def _rejected(request: GenerationRequest, role: Role, reason: str) -> RejectedRow:
    return RejectedRow(
        row=request.row,
        field=COLUMNS[role],
        reason=reason,
        prompt=request.prompt,
        tags=request.tags,
    )

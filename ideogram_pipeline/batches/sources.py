"""The images operation rows work on (issue 19): found, checked and pinned to their bytes
before anything is sent.

A row's ``image`` cell names its source as people have it: the id (or a unique prefix) of
a stored record, an ``s3://`` URI inside the storage root, or a file path (relative to the
batch file, or absolute). Each becomes a ``SourceImage`` (ideogram/operations.py): the
SHA-256 of the bytes (what the request hash covers), where the bytes are kept, and the
record the image is (the result's ``derived_from``). A stored record's image is sent from
its own object; a file from outside the history is stored once under
``references/<sha256>.<ext>``, like a reference image, so a file that changes later changes
nothing. A source that cannot be used (deleted by retention, not an image, too large, not
found) makes the row ``rejected`` naming it, and nothing is paid.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.history.record_ids import MIN_ID_PREFIX
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.ideogram.operations import SourceImage, operation
from ideogram_pipeline.ideogram.references import REFERENCE_PREFIX, sniff_image
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore
from ideogram_pipeline.storage.base import StorageError

__all__ = ["SourceProblem", "resolve_sources"]

#: A record id or prefix as people paste it: hex, as long as other commands take (ids are 32).
_ID_RE = re.compile(rf"[0-9a-f]{{{MIN_ID_PREFIX},32}}")


class SourceProblem(ValueError):
    """A source image cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class _Stored:
    """A stored image of the history: its record and object."""

    record_id: str
    image_key: str
    sha256: str | None


def resolve_sources(
    batch: Batch, settings: Settings, store: ObjectStore, *, write: bool = True
) -> Batch:
    """``batch`` with every operation row's source resolved; a row whose source cannot be
    used becomes a :class:`RejectedRow` naming the ``image`` column.

    ``write=False`` (an estimate) resolves the same sources without storing a file's bytes
    under ``references/``: the request hashes are the same, nothing is written."""
    if not any(r.source_text for r in batch.requests):
        return batch
    finder = _Finder(batch, settings, store, write=write)
    rows = tuple(
        finder.resolve(row) if isinstance(row, GenerationRequest) and row.source_text else row
        for row in batch.rows
    )
    return replace(batch, rows=rows)


class _Finder:
    def __init__(
        self, batch: Batch, settings: Settings, store: ObjectStore, *, write: bool
    ) -> None:
        self.base = Path(batch.source).resolve().parent
        self.settings = settings
        self.store = store
        self.write = write
        self._stored: list[_Stored] | None = None
        self._by_id: dict[str, _Stored] | None = None
        self._deleted: dict[str, str] | None = None
        #: (storage key, size limit) -> the source it resolved to: a batch may name one
        #: image in many rows, and operations differ in the largest image they take.
        self._by_key: dict[tuple[str, int], SourceImage] = {}

    def resolve(self, request: GenerationRequest) -> GenerationRequest | RejectedRow:
        text = request.source_text
        try:
            source = self._find(text, operation(request.operation).max_image_bytes)
        except SourceProblem as problem:
            return RejectedRow(
                row=request.row,
                field="image",
                reason=f"{text!r}: {problem}",
                prompt=request.prompt,
                tags=request.tags,
            )
        return replace(request, source=source, source_text="")

    def _find(self, text: str, limit: int) -> SourceImage:
        if text.startswith("s3://"):
            root = self.store.root.rstrip("/") + "/"
            if not text.startswith(root):
                raise SourceProblem(f"is outside the storage root {root}")
            key = text[len(root) :]
            record = next((s for s in self._stored_images() if s.image_key == key), None)
            return self._from_key(key, None if record is None else record.record_id, limit)
        path = Path(text).expanduser()
        path = path if path.is_absolute() else self.base / path
        if path.is_file():
            return self._from_file(path, limit)
        if _ID_RE.fullmatch(text.lower()) and "/" not in text:
            record = self._record(text.lower())
            return self._from_key(record.image_key, record.record_id, limit)
        raise SourceProblem(f"no such file (looked for {path}) and not a record id")

    def _record(self, prefix: str) -> _Stored:
        # A whole id (what ``apply`` writes) is a dict look-up: scanning the history once
        # per row would make a selection of n rows cost n x history-size comparisons.
        if (exact := self._stored_by_id().get(prefix)) is not None:
            return exact
        matches = {s.record_id: s for s in self._stored_images() if s.record_id.startswith(prefix)}
        if len(matches) == 1:
            return next(iter(matches.values()))
        if len(matches) > 1:
            shown = ", ".join(sorted(m[:12] for m in matches)[:3])
            raise SourceProblem(f"matches {len(matches)} stored images ({shown}...); give more")
        deleted = [(i, when) for i, when in self._deleted_ids().items() if i.startswith(prefix)]
        if deleted:
            record_id, when = sorted(deleted)[0]
            raise SourceProblem(
                f"record {record_id} was deleted by retention cleanup ({when}); its image is gone"
            )
        raise SourceProblem("is neither a file nor the id of a stored image")

    def _from_key(self, key: str, record_id: str | None, limit: int) -> SourceImage:
        if (key, limit) in self._by_key:
            return self._by_key[(key, limit)]
        try:
            data = self.store.get_bytes(key)
        except StorageError as exc:
            raise SourceProblem(f"cannot be read from the storage root: {exc}") from exc
        media_type = _check(data, limit)
        source = SourceImage(hashlib.sha256(data).hexdigest(), key, media_type, record_id)
        self._by_key[(key, limit)] = source
        return source

    def _from_file(self, path: Path, limit: int) -> SourceImage:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SourceProblem(f"cannot be read ({exc.strerror})") from exc
        media_type = _check(data, limit)
        digest = hashlib.sha256(data).hexdigest()
        # Our own image, downloaded and passed around as a file, keeps its lineage.
        record = next((s for s in self._stored_images() if s.sha256 == digest), None)
        if record is not None:
            return SourceImage(digest, record.image_key, media_type, record.record_id)
        extension = media_type.rsplit("/", 1)[-1].replace("jpeg", "jpg")
        key = f"{REFERENCE_PREFIX}{digest}.{extension}"
        if self.write and self.store.head(key) is None:
            self.store.put_bytes(key, data, content_type=media_type, create_only=True)
        return SourceImage(digest, key, media_type, None)

    def _stored_images(self) -> list[_Stored]:
        """Every stored image of the history (one query per batch): rows that left their
        file still have their images, so ``generations_all``."""
        if self._stored is None:
            found = self._query(
                "SELECT id, image_key, sha256 FROM generations_all "
                "WHERE status = 'stored' AND image_key IS NOT NULL"
            )
            self._stored = [_Stored(str(i), str(k), s) for i, k, s in found]
        return self._stored

    def _stored_by_id(self) -> dict[str, _Stored]:
        """:meth:`_stored_images` by record id, built once."""
        if self._by_id is None:
            self._by_id = {s.record_id: s for s in self._stored_images()}
        return self._by_id

    def _deleted_ids(self) -> dict[str, str]:
        """Ids retention deleted, with when (its roll-up keeps them for the reports)."""
        if self._deleted is None:
            rows = self._query(
                "SELECT id, min(deleted_at) FROM usage_rollup WHERE deleted_at IS NOT NULL "
                "GROUP BY id",
                views=("usage_rollup",),
            )
            self._deleted = {str(i): f"{when:%Y-%m-%d}" for i, when in rows}
        return self._deleted

    def _query(self, sql: str, views: tuple[str, ...] = ("generations_all",)) -> list[tuple]:  # type: ignore[type-arg]
        from ideogram_pipeline import history

        con = history.connect(self.settings, self.store, views=views)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


def _check(data: bytes, limit: int) -> str:
    """The media type of ``data``; a :class:`SourceProblem` if Ideogram would refuse it."""
    sniffed = sniff_image(data)
    if sniffed is None:
        raise SourceProblem("is not a PNG, JPEG or WebP image")
    if len(data) > limit:
        raise SourceProblem(f"is {len(data):,} bytes; the limit is {limit:,}")
    return sniffed[0]

"""Regenerate recorded images with the same request and seed, and say how close they came.

A stored record keeps every request parameter and the seed Ideogram used, so the request
can be sent again. Two details make that exact rather than approximate:

- A record's ``style_type`` and ``resolution`` are what Ideogram *reported* (an ``AUTO``
  style resolved, a size chosen from an aspect ratio), not always what was sent. The
  original request is rebuilt by trying the few possible sent values and keeping the one
  whose canonical hash equals the recorded ``request_hash``.
- Images of one request share a seed but differ by position. A record at image index 1 of
  a two-image request is reproduced by asking for two images again; both are stored, each
  linked to the original at its index through ``reproduced_from``.

Reproductions go through the ordinary engine (:func:`ideogram_pipeline.runs.runner.execute_batch`)
as a synthetic batch named ``reproduce-...``, so they are stored, checksummed, described in
their PNG text chunks and recorded like any image, and are never "linked" as duplicates
(that is the point). The comparison uses ``download_sha256``, the bytes as Ideogram sent
them (stored bytes differ: their text chunks name the new record); when those differ, the
perceptual-hash distance says how close the picture is (0 = indistinguishable).
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.history.tags import validate_tag
from ideogram_pipeline.ideogram.generation import (
    CONTROL_FIELDS,
    CONTROL_SETTINGS,
    GenerationRequest,
)
from ideogram_pipeline.ideogram.prices import request_price
from ideogram_pipeline.ideogram.references import ReferenceImage
from ideogram_pipeline.storage.keys import batch_key_for

if TYPE_CHECKING:
    import duckdb

    from ideogram_pipeline.runs.engine import BatchSummary
    from ideogram_pipeline.settings import Settings
    from ideogram_pipeline.storage import ObjectStore

__all__ = ["PlannedRequest", "ReproduceError", "Reproduction", "plan", "reproduce"]

_SOURCE_COLUMNS = (
    "id",
    "batch",
    "row",
    "run_id",
    "image_index",
    "status",
    "prompt",
    "negative_prompt",
    "model",
    "style_type",
    "aspect_ratio",
    "resolution",
    "rendering_speed",
    "magic_prompt",
    "seed",
    "requested_seed",
    "num_images",
    "request_hash",
    "sha256",
    "download_sha256",
    "phash",
    "image_key",
)


class ReproduceError(ValueError):
    """Nothing can be reproduced as asked; the message says why."""


@dataclass
class PlannedRequest:
    """One request to send again and the original record behind each image index."""

    request: GenerationRequest
    sources: dict[int, dict[str, Any]]
    exact: bool  # False when the original request could not be rebuilt hash-for-hash

    @property
    def cost_usd(self) -> float:
        price = request_price(self.request)
        return price * self.request.num_images


@dataclass(frozen=True)
class Reproduction:
    """The outcome for one new image."""

    new_id: str
    source_id: str | None
    status: str
    identical: bool | None
    distance: int | None
    stored_uri: str | None
    error: str | None


@dataclass
class ReproduceResult:
    batch: str
    summary: BatchSummary
    items: list[Reproduction] = field(default_factory=list)
    approximate: list[str] = field(default_factory=list)


def _fetch(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> list[dict[str, Any]]:
    # SELECT *: a table written before issue 18's control columns has none of them, and
    # they then read as unset (``record.get``).
    cursor = con.execute(f"SELECT * FROM generation_records WHERE {where}", params)
    names = [column[0] for column in cursor.description or ()]
    wanted = {
        *_SOURCE_COLUMNS,
        *CONTROL_FIELDS,
        "reference_sha256s",
        "reference_roles",
        "operation",
        "derived_from",
    }
    return [
        {name: value for name, value in zip(names, row, strict=True) if name in wanted}
        for row in cursor.fetchall()
    ]


def _recorded_references(record: dict[str, Any]) -> tuple[ReferenceImage, ...] | None:
    """The record's reference images; their file endings are found in the store later
    (:func:`_with_reference_keys`), as the request hash does not depend on them."""
    hashes, roles = record.get("reference_sha256s"), record.get("reference_roles")
    if not hashes or not roles:
        return None
    return tuple(
        ReferenceImage(role, sha256, "") for role, sha256 in zip(roles, hashes, strict=True)
    )


def _with_reference_keys(request: GenerationRequest, store: ObjectStore) -> GenerationRequest:
    """``request`` with each reference image's stored file ending; a reference that is no
    longer stored cannot be sent again byte for byte, so it stops the reproduction."""
    if not request.references:
        return request
    located = []
    for image in request.references:
        for extension in ("png", "jpg", "webp"):
            candidate = replace(image, extension=extension)
            if store.head(candidate.key) is not None:
                located.append(candidate)
                break
        else:
            raise ReproduceError(
                f"reference image {image.sha256[:12]} ({image.role}) is no longer stored "
                "under references/; it cannot be sent again"
            )
    return replace(request, references=tuple(located))


def _original_request(record: dict[str, Any]) -> tuple[GenerationRequest, bool]:
    """The request as first sent, found by matching the recorded hash."""
    common = {
        "row": 1,
        "prompt": record["prompt"],
        "model": record["model"],
        "num_images": record["num_images"] or 1,
        "negative_prompt": record["negative_prompt"],
        "aspect_ratio": record["aspect_ratio"],
        "rendering_speed": record["rendering_speed"],
        "magic_prompt": record["magic_prompt"],
        "seed": record["requested_seed"],
        **{name: record.get(name) for name in CONTROL_SETTINGS},
        "references": _recorded_references(record),
    }
    if common["style_codes"] is not None:
        common["style_codes"] = tuple(common["style_codes"])
    for style in dict.fromkeys([record["style_type"], None, "AUTO"]):
        for resolution in dict.fromkeys([record["resolution"], None]):
            candidate = GenerationRequest(**common, style_type=style, resolution=resolution)
            if candidate.request_hash() == record["request_hash"]:
                return candidate, True
    resolution = None if record["aspect_ratio"] else record["resolution"]
    fallback = GenerationRequest(**common, style_type=record["style_type"], resolution=resolution)
    return fallback, False


def plan(
    con: duckdb.DuckDBPyConnection,
    *,
    ids: Sequence[str] = (),
    batch: str | None = None,
    tags: Sequence[str] = (),
) -> list[PlannedRequest]:
    """The requests that reproduce ``ids`` (full record ids) or every stored image of ``batch``."""
    if bool(ids) == bool(batch):
        raise ReproduceError("give record ids or --batch, not both or neither")
    if batch:
        chosen = _fetch(
            con,
            # The batch as its latest file holds it (rows that left it are not re-paid).
            "id IN (SELECT id FROM generations WHERE batch = ? AND status = 'stored' "
            "AND in_file IS NOT FALSE)",
            [batch],
        )
        if not chosen:
            raise ReproduceError(f"batch {batch!r} has no stored images to reproduce")
    else:
        chosen = _fetch(con, "list_contains(?::VARCHAR[], id)", [list(ids)])
        not_stored = [r for r in chosen if r["status"] != "stored"]
        if not_stored:
            r = not_stored[0]
            raise ReproduceError(f"record {r['id']} is {r['status']}: there is no image to compare")
    _refuse_operations(chosen)
    clean_tags = tuple(dict.fromkeys(validate_tag(tag) for tag in tags))
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = defaultdict(dict)
    for record in chosen:
        key = (record["batch"], record["row"], record["run_id"], record["request_hash"])
        groups[key][record["image_index"]] = record
    if not batch:  # the other images of the same request are regenerated too: link them
        for key, by_index in groups.items():
            siblings = _fetch(
                con,
                'batch = ? AND "row" = ? AND run_id = ? AND request_hash = ? '
                "AND status = 'stored'",
                list(key),
            )
            for sibling in siblings:
                by_index.setdefault(sibling["image_index"], sibling)
    planned = []
    for number, (_key, by_index) in enumerate(sorted(groups.items(), key=_group_order), start=1):
        first = by_index[min(by_index)]
        if first["seed"] is None:
            raise ReproduceError(f"record {first['id']} has no recorded seed")
        original, exact = _original_request(first)
        request = replace(original, row=number, seed=first["seed"], tags=clean_tags)
        planned.append(PlannedRequest(request, dict(by_index), exact))
    return planned


def _refuse_operations(chosen: list[dict[str, Any]]) -> None:
    """Reproduce sends a generation again; an image an operation made (an upscale, a remix)
    is reproduced by running that operation on its source, which ``apply`` does."""
    for record in chosen:
        operation = record.get("operation")
        if operation not in (None, "generate"):
            source = record.get("derived_from")
            raise ReproduceError(
                f"record {record['id']} was made by {operation} from {source}: reproduce "
                f"regenerates generations; run the operation again with `ideogram-pipeline "
                f"apply {operation} --where \"id = '{source}'\"`"
            )


def _group_order(item: tuple[tuple[Any, ...], dict[int, dict[str, Any]]]) -> tuple[Any, ...]:
    (batch, row, run_id, _hash), _ = item
    return (batch or "", row or 0, run_id or "")


def _batch_key(label: str) -> str:
    """A fresh batch key per reproduction, so one never hides another in ``generations``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return batch_key_for(f"reproduce-{label.lower()}-{stamp}-{uuid.uuid4().hex[:6]}")


def _source_phash(store: ObjectStore, source: dict[str, Any]) -> str | None:
    if source.get("phash"):
        return str(source["phash"])
    if not source.get("image_key"):
        return None
    from ideogram_pipeline.images.fingerprints import perceptual_hash

    try:
        return perceptual_hash(store.get_bytes(source["image_key"]))
    except Exception:  # the original image may be gone (retention); then no distance
        return None


def reproduce(
    settings: Settings,
    store: ObjectStore,
    planned: Sequence[PlannedRequest],
    *,
    label: str,
) -> ReproduceResult:
    """Send ``planned`` through the engine, then compare each new image with its source."""
    from ideogram_pipeline import history
    from ideogram_pipeline.images.fingerprints import hamming
    from ideogram_pipeline.runs.runner import execute_batch

    if not planned:
        raise ReproduceError("nothing to reproduce")
    key = _batch_key(label)
    extra = {
        (item.request.row, index): {"reproduced_from": source["id"]}
        for item in planned
        for index, source in item.sources.items()
    }
    digest = hashlib.sha256("\n".join(sorted(str(k) for k in extra)).encode()).hexdigest()
    batch = Batch(
        key=key,
        source=f"reproduce:{label}",
        content_sha256=digest,
        rows=tuple(_with_reference_keys(item.request, store) for item in planned),
        format="native",
    )
    summary = execute_batch(batch, settings, store=store, force=True, extra_fields=extra)
    sources = {s["id"]: s for item in planned for s in item.sources.values()}
    con = history.connect(settings, store)
    try:
        cursor = con.execute(
            "SELECT id, reproduced_from, status, download_sha256, phash, stored_uri, error "
            'FROM generations WHERE batch = ? ORDER BY "row", image_index',
            [key],
        )
        rows = cursor.fetchall()
    finally:
        con.close()
    result = ReproduceResult(key, summary)
    result.approximate = [
        s["id"] for item in planned if not item.exact for s in item.sources.values()
    ]
    for new_id, source_id, status, download_sha, phash, uri, error in rows:
        source = sources.get(source_id) if source_id else None
        identical = distance = None
        if source is not None and status == "stored":
            before = source.get("download_sha256") or source.get("sha256")
            identical = bool(download_sha) and download_sha == before
            before_phash = None if identical else _source_phash(store, source)
            if identical:
                distance = 0
            elif phash and before_phash:
                distance = hamming(phash, before_phash)
        result.items.append(
            Reproduction(new_id, source_id, status, identical, distance, uri, error)
        )
    return result

"""Exact duplicates are not paid twice; near duplicates are found by perceptual hash.

**Exact requests.** A request with an explicit seed is deterministic: the same prompt,
parameters and seed give the same picture. So before a batch runs, every such row whose
canonical request hash (:meth:`GenerationRequest.request_hash`, seed included) was already
stored anywhere in the history, in any batch, is *linked* instead of sent. Rows with a
random seed (seed empty) are new requests by definition and are never linked.

A linked row still needs a record, because every CSV row ends with one, and the statuses
are fixed (stored / unsafe / rejected / failed). It gets a ``stored`` record that points at
the same image (``stored_uri``, ``image_key``, ``sha256``, ``phash`` copied), costs 0, and
names the original record in ``duplicate_of`` (the first original, never another link). So
queries on ``status = 'stored'`` keep finding every row's image, ``sum(cost_usd)`` stays
the real spend, and ``duplicate_of IS NULL`` selects distinct paid images. The image's own
text chunks describe the original record. ``run --force`` sends such rows anyway.

**Near duplicates.** Each stored image carries a 64-bit pHash (``fingerprint.py``);
:func:`near_duplicate_groups` clusters images within a Hamming distance. Candidate pairs
come from the pigeonhole principle: split the hash into ``distance + 1`` blocks; two hashes
that differ in at most ``distance`` bits agree exactly on at least one block. Only hashes
sharing a block value are compared, so a large history is not compared pairwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

    from ideogram_pipeline.models import GenerationRequest
    from ideogram_pipeline.settings import Settings
    from ideogram_pipeline.storage import ObjectStore

__all__ = ["existing_images", "link_records", "near_duplicate_groups"]

#: Columns copied from the original record to a linked one.
LINKED_COLUMNS = (
    "image_index",
    "seed",
    "expanded_prompt",
    "resolution",
    "style_type",
    "stored_uri",
    "image_key",
    "sha256",
    "size_bytes",
    "download_sha256",
    "phash",
)
MAX_DISTANCE = 32
_HEAD_WORKERS = 16


def existing_images(
    settings: Settings, store: ObjectStore, requests: Iterable[GenerationRequest]
) -> dict[str, list[dict[str, Any]]]:
    """Request hash -> the stored images (one per image index) of an earlier identical request.

    Only requests with an explicit seed are considered. A hash is included only when every
    image index of the request has a stored record whose object still exists (an image
    removed by retention is not something to link to). Originals win over earlier links.
    """
    from ideogram_pipeline import history

    hashes = sorted({r.request_hash() for r in requests if r.seed is not None})
    if not hashes:
        return {}
    con = history.connect(settings, store)
    try:
        cursor = con.execute(
            f"SELECT {', '.join(LINKED_COLUMNS)}, id, duplicate_of, request_hash, num_images "
            "FROM generation_records WHERE status = 'stored' AND image_key IS NOT NULL "
            "AND list_contains(?::VARCHAR[], request_hash) "
            "ORDER BY duplicate_of IS NOT NULL, created_at, id",
            [hashes],
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    finally:
        con.close()
    candidates: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        candidates[row["request_hash"]][row["image_index"]].append(row)
    keys = sorted({row["image_key"] for row in rows})
    with ThreadPoolExecutor(max_workers=_HEAD_WORKERS) as pool:
        heads = list(pool.map(store.head, keys))
    alive = {key for key, info in zip(keys, heads, strict=True) if info is not None}
    found: dict[str, list[dict[str, Any]]] = {}
    for request_hash, by_index in candidates.items():
        wanted = next(iter(by_index.values()))[0]["num_images"] or 1
        chosen = []
        for index in range(wanted):
            live = [r for r in by_index.get(index, []) if r["image_key"] in alive]
            if not live:
                break
            chosen.append(live[0])
        else:
            found[request_hash] = chosen
    return found


def link_records(
    bases: Sequence[dict[str, Any]], originals: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``stored`` records for a row linked to ``originals`` (see the module docstring).

    ``bases[i]`` is the engine's fresh record for image ``i`` of the row (its id, run and
    request columns); the image columns come from ``originals[i]``.
    """
    records = []
    for base, original in zip(bases, originals, strict=True):
        record = dict(base)
        for name in LINKED_COLUMNS:
            if original.get(name) is not None:
                record[name] = original[name]
        record.update(
            status="stored",
            is_safe=True,
            cost_usd=0.0,
            attempts=0,
            duplicate_of=original.get("duplicate_of") or original["id"],
        )
        records.append(record)
    return records


# -- near duplicates ------------------------------------------------------------------------


def _spans(distance: int) -> list[tuple[int, int]]:
    """``distance + 1`` bit ranges (shift, width) covering 64 bits."""
    blocks = distance + 1
    base, extra = divmod(64, blocks)
    spans, shift = [], 0
    for number in range(blocks):
        width = base + (1 if number < extra else 0)
        spans.append((shift, width))
        shift += width
    return spans


def _close_pairs(hashes: Any, distance: int) -> Iterable[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``distance`` bits."""
    import numpy as np

    for shift, width in _spans(distance):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends, strict=True):
            if end - start < 2:
                continue
            members = order[start:end]
            block = hashes[members]
            bits = np.bitwise_count(block[:, None] ^ block[None, :])
            rows, cols = np.nonzero(np.triu(bits <= distance, 1))
            yield from zip(members[rows].tolist(), members[cols].tolist(), strict=True)


def near_duplicate_groups(
    con: duckdb.DuckDBPyConnection, distance: int, *, batch: str | None = None
) -> list[list[dict[str, Any]]]:
    """Groups of distinct stored images whose pHashes are within ``distance`` bits.

    One entry per stored object (linked records share their original's image and are
    counted in its ``records``). Each entry has ``distance``, its bits from the group's
    first (earliest) image. Largest groups first.
    """
    import numpy as np

    from ideogram_pipeline.fingerprint import hamming

    if not 0 <= distance <= MAX_DISTANCE:
        raise ValueError(f"distance must be within 0..{MAX_DISTANCE}, got {distance}")
    sql = (
        "SELECT arg_min(id, (duplicate_of IS NOT NULL, created_at)) AS id, any_value(batch) "
        'AS batch, arg_min("row", (duplicate_of IS NOT NULL, created_at)) AS "row", '
        "arg_min(prompt, (duplicate_of IS NOT NULL, created_at)) AS prompt, "
        "any_value(stored_uri) AS stored_uri, any_value(phash) AS phash, "
        "min(created_at) AS created_at, count(*) AS records "
        "FROM generations WHERE status = 'stored' AND phash IS NOT NULL "
        "AND image_key IS NOT NULL AND (? IS NULL OR batch = ?) "
        "GROUP BY image_key ORDER BY created_at, id"
    )
    cursor = con.execute(sql, [batch, batch])
    names = [d[0] for d in cursor.description]
    images = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    if len(images) < 2:
        return []
    hashes = np.array([int(image["phash"], 16) for image in images], dtype=np.uint64)
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in _close_pairs(hashes, distance):
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    members: dict[int, list[int]] = defaultdict(list)
    for index in range(len(images)):
        members[find(index)].append(index)
    groups = []
    for indexes in members.values():
        if len(indexes) < 2:
            continue
        first = images[indexes[0]]["phash"]
        groups.append(
            [{**images[i], "distance": hamming(first, images[i]["phash"])} for i in indexes]
        )
    groups.sort(key=lambda group: (-len(group), group[0]["created_at"]))
    return groups

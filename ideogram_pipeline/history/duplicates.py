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

**Near duplicates.** Each stored image carries a 64-bit pHash (``images/fingerprints.py``);
:func:`near_duplicate_groups` clusters images within a Hamming distance. Candidate pairs
come from the pigeonhole principle: split the hash into ``distance + 1`` blocks; two hashes
that differ in at most ``distance`` bits agree exactly on at least one block. Only hashes
sharing a block value are compared, so a large history is not compared pairwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ideogram_pipeline.safe_output import sql_list

if TYPE_CHECKING:
    import duckdb

    from ideogram_pipeline.history.schema import GenerationRecord
    from ideogram_pipeline.ideogram.generation import GenerationRequest
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
    settings: Settings,
    store: ObjectStore,
    requests: Iterable[GenerationRequest],
    *,
    include_simulated: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Request hash -> the stored images (one per image index) of an earlier identical request.

    Only requests with an explicit seed are considered. A hash is included only when every
    image index of the request has a stored record whose object still exists (an image
    removed by retention is not something to link to). Originals win over earlier links.
    ``include_simulated`` false (a run against the real API) never links to an image a
    simulator made.
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
            f"{'' if include_simulated else 'AND simulated IS NOT TRUE '}"
            # Literals, not a bound parameter: binding one imports pandas (0.4 s before a
            # run's first request; history/duckdb_s3.py).
            f"AND list_contains({sql_list(hashes)}::VARCHAR[], request_hash) "
            "ORDER BY duplicate_of IS NOT NULL, created_at, id"
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
    bases: Sequence[GenerationRecord], originals: Sequence[dict[str, Any]]
) -> list[GenerationRecord]:
    """``stored`` records for a row linked to ``originals`` (see the module docstring).

    ``bases[i]`` is the engine's fresh record for image ``i`` of the row (its id, run and
    request columns); the image columns come from ``originals[i]``.
    """
    records = []
    for base, original in zip(bases, originals, strict=True):
        copied = {n: original[n] for n in LINKED_COLUMNS if original.get(n) is not None}
        record = replace(
            base,
            **copied,
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
    """Index pairs of distinct ``hashes`` that differ in at most ``distance`` bits.

    Per block: sort by the block's value, then compare each hash with the one ``offset``
    places on, for growing offsets, while any such neighbours still share the block value
    (in sorted order, equal values are contiguous). Each step is one vectorised pass, so
    the cost is about (largest bucket) x n instead of n squared.
    """
    import numpy as np

    for shift, width in _spans(distance):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys, sorted_hashes = keys[order], hashes[order]
        for offset in range(1, len(order)):
            same = sorted_keys[offset:] == sorted_keys[:-offset]
            if not same.any():
                break
            bits = np.bitwise_count(sorted_hashes[offset:] ^ sorted_hashes[:-offset])
            close = np.flatnonzero(same & (bits <= distance))
            yield from zip(order[close].tolist(), order[close + offset].tolist(), strict=True)


def near_duplicate_groups(
    con: duckdb.DuckDBPyConnection, distance: int, *, batch: str | None = None
) -> list[list[dict[str, Any]]]:
    """Groups of distinct stored images whose pHashes are within ``distance`` bits.

    One entry per stored object (linked records share their original's image and are
    counted in its ``records``). Each entry has ``distance``, its bits from the group's
    first (earliest) image. Largest groups first.
    """
    import numpy as np

    from ideogram_pipeline.images.fingerprints import hamming

    if not 0 <= distance <= MAX_DISTANCE:
        raise ValueError(f"distance must be within 0..{MAX_DISTANCE}, got {distance}")
    stored = (
        "FROM generations WHERE status = 'stored' AND phash IS NOT NULL "
        "AND image_key IS NOT NULL AND (? IS NULL OR batch = ?)"
    )
    # Pass 1: only keys and hashes (as integers), so a large history stays cheap.
    table = con.execute(
        "SELECT image_key, ('0x' || any_value(phash))::UBIGINT AS hash, min(created_at) AS first "
        f"{stored} GROUP BY image_key ORDER BY first, image_key",
        [batch, batch],
    ).fetch_arrow_table()
    if table.num_rows < 2:
        return []
    keys = table.column("image_key").to_pylist()
    hashes = table.column("hash").to_numpy()
    # Identical hashes are one node: they group together without being compared.
    unique, node_of = np.unique(hashes, return_inverse=True)
    parent = list(range(len(unique)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in _close_pairs(unique, distance):
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    members: dict[int, list[int]] = defaultdict(list)
    for index, node in enumerate(node_of.reshape(-1).tolist()):
        members[find(node)].append(index)
    clusters = [indexes for indexes in members.values() if len(indexes) > 1]
    if not clusters:
        return []
    # Pass 2: details of the grouped images only; the original record speaks for its links.
    first_record = "(duplicate_of IS NOT NULL, created_at)"
    cursor = con.execute(
        f"SELECT image_key, arg_min(id, {first_record}) AS id, "
        f"arg_min(batch, {first_record}) AS batch, "
        f'arg_min("row", {first_record}) AS "row", arg_min(prompt, {first_record}) AS prompt, '
        "any_value(stored_uri) AS stored_uri, any_value(phash) AS phash, "
        "bool_or(simulated IS TRUE) AS simulated, "
        f"min(created_at) AS created_at, count(*) AS records {stored} "
        "AND list_contains(?::VARCHAR[], image_key) GROUP BY image_key",
        [batch, batch, [keys[i] for indexes in clusters for i in indexes]],
    )
    names = [d[0] for d in cursor.description]
    details = {row[0]: dict(zip(names[1:], row[1:], strict=True)) for row in cursor.fetchall()}
    groups = []
    for indexes in clusters:
        images = [details[keys[i]] for i in indexes]
        first = images[0]["phash"]
        groups.append([{**image, "distance": hamming(first, image["phash"])} for image in images])
    groups.sort(key=lambda group: (-len(group), group[0]["created_at"]))
    return groups

"""Self-describing PNGs: generation parameters in PNG text chunks.

A stored image must say where it came from even when it is copied out of the storage root,
mailed around or opened months later in an image viewer. Two text chunks are added:

- ``parameters``: the human-readable form other generators made familiar (the prompt, then
  ``Negative prompt: ...``, then one ``Seed: ..., Size: ..., Model: ...`` line), which
  viewers and prompt-inspector tools already show. ``tEXt`` when the text is Latin-1,
  otherwise ``iTXt`` (UTF-8), so non-ASCII prompts survive intact.
- ``ideogram-pipeline``: ``iTXt`` holding the full record as JSON (prompt, expanded prompt,
  negative prompt, model, seed, size, style, rendering speed, record id, batch, ...).

The chunks are inserted just before ``IEND`` by rewriting the chunk list: the image data is
never decoded or recompressed, so the pixels are exactly what Ideogram sent. Chunks with our
keywords already present are replaced, so embedding twice gives the same bytes. Mutable
facts (tags, pins, descriptions) and the expiring, signed download URL are deliberately
left out; the stable public URL (``IDEOGRAM_PUBLIC_BASE_URL`` + key) is in.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import Any

__all__ = [
    "JSON_KEYWORD",
    "PARAMETERS_KEYWORD",
    "PngError",
    "embed_metadata",
    "parameters_text",
    "prepare_for_storage",
    "read_metadata",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMETERS_KEYWORD = "parameters"
JSON_KEYWORD = "ideogram-pipeline"
#: Bump when the JSON chunk's fields change meaning.
SCHEMA_VERSION = 1
#: Compressed text chunks are inflated at most this far: a tiny zTXt must not eat memory.
MAX_TEXT_BYTES = 4 * 1024 * 1024
_TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")
_OUR_KEYWORDS = {PARAMETERS_KEYWORD.encode("latin-1"), JSON_KEYWORD.encode("latin-1")}

#: Record fields copied into the JSON chunk, in this order.
RECORD_FIELDS = (
    "id",
    "batch",
    "row",
    "image_index",
    "prompt",
    "expanded_prompt",
    "negative_prompt",
    "model",
    "seed",
    "requested_seed",
    "resolution",
    "aspect_ratio",
    "style_type",
    "rendering_speed",
    "magic_prompt",
    "num_images",
    "request_hash",
    # Attempt and generation ids, not run ids or times: an attempt finished by a later run
    # after a crash must produce the same bytes, so the create-only write sees its own image.
    "attempt_id",
    "generation_id",
    "reproduced_from",
    "simulated",
    # Issue 18's controls and reference images (4.5's ``size`` stays in the history: this
    # chunk's ``size`` is the image's resolution).
    "style_preset",
    "style_codes",
    "color_palette",
    "transparent",
    "quality",
    "enable_copyright_detection",
    "reference_sha256s",
    "reference_roles",
    # Issue 19: what made a derived image (upscale, remix, ...) and from which record, and
    # where anyone can fetch it (a CDN base + its key; absent without a public base). The
    # description is left out: it changes in place, like tags.
    "operation",
    "derived_from",
    "public_url",
)


class PngError(ValueError):
    """The bytes are not a well-formed PNG (bad signature, truncated chunk, bad CRC)."""


def _chunks(png: bytes) -> Iterator[tuple[bytes, memoryview, int, int]]:
    """Yield ``(type, data, start, end)`` for each chunk; ``end`` is past the CRC.

    ``data`` is a view into ``png``, not a copy: an image's pixel chunks are megabytes,
    and copying them (with the page faults of each new buffer) held the GIL that the event
    loop needs.
    """
    if not png.startswith(PNG_SIGNATURE):
        raise PngError("not a PNG (bad signature)")
    view = memoryview(png)
    pos = len(PNG_SIGNATURE)
    while pos < len(png):
        if pos + 8 > len(png):
            raise PngError(f"truncated chunk header at byte {pos}")
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        end = pos + 12 + length
        if length > 2**31 - 1 or end > len(png):
            raise PngError(f"chunk {kind!r} at byte {pos} runs past the end of the file")
        yield kind, view[pos + 8 : pos + 8 + length], pos, end
        if kind == b"IEND":
            return
        pos = end
    raise PngError("PNG has no IEND chunk")


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _clean(text: str) -> str:
    """PNG text may not hold NUL; keep newlines, drop other control characters."""
    return "".join(ch for ch in text if ch in "\n\t" or (ch >= " " and ch != "\x7f"))


def _text_chunk(keyword: str, text: str) -> bytes:
    """``tEXt`` when Latin-1 can carry ``text``, else uncompressed UTF-8 ``iTXt``."""
    key = keyword.encode("latin-1")
    text = _clean(text)
    try:
        return _chunk(b"tEXt", key + b"\x00" + text.encode("latin-1"))
    except UnicodeEncodeError:
        return _itxt_chunk(keyword, text)


def _itxt_chunk(keyword: str, text: str) -> bytes:
    # keyword NUL, compression flag 0, method 0, empty language tag NUL, empty translated
    # keyword NUL, then UTF-8 text.
    data = keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + _clean(text).encode("utf-8")
    return _chunk(b"iTXt", data)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _format_value(value: Any) -> str:
    """A ``Key: value`` value: quoted (JSON style) when it holds a comma, colon or newline."""
    text = str(value)
    if any(ch in text for ch in ',:\n"') or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def parameters_text(record: Mapping[str, Any], batch: str | None = None) -> str:
    """The human-readable ``parameters`` text for ``record``.

    Prompt first, ``Negative prompt:`` on its own line when there is one, then a single
    line of ``Key: value`` pairs, as in the form other generators write.
    """
    lines = [str(record.get("prompt") or "")]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    pairs = [
        ("Seed", record.get("seed")),
        ("Size", record.get("resolution")),
        ("Aspect ratio", record.get("aspect_ratio")),
        ("Model", record.get("model")),
        ("Style", record.get("style_type")),
        ("Rendering speed", record.get("rendering_speed")),
        ("Magic prompt", record.get("magic_prompt")),
        ("Style preset", record.get("style_preset")),
        ("Style codes", "|".join(record.get("style_codes") or ()) or None),
        ("Color palette", record.get("color_palette")),
        ("Transparent", record.get("transparent") or None),
        ("Quality", record.get("quality")),
        ("References", _references_text(record)),
        # A generation says nothing here; a derived image names what made it and from what.
        ("Operation", _operation(record)),
        ("Derived from", record.get("derived_from")),
        ("Batch", batch if batch is not None else record.get("batch")),
        ("Row", record.get("row")),
        ("Record", record.get("id")),
        ("Generator", "Ideogram via ideogram-pipeline"),
    ]
    lines.append(", ".join(f"{key}: {_format_value(v)}" for key, v in pairs if v not in (None, "")))
    return "\n".join(lines)


def _operation(record: Mapping[str, Any]) -> str | None:
    operation = record.get("operation")
    return None if operation in (None, "", "generate") else str(operation)


def _references_text(record: Mapping[str, Any]) -> str | None:
    """``style 3f9c2a7be104|character 0a1b...``: each reference image's role and hash."""
    hashes, roles = record.get("reference_sha256s"), record.get("reference_roles")
    if not hashes or not roles:
        return None
    return "|".join(f"{role} {sha[:12]}" for role, sha in zip(roles, hashes, strict=True))


def _record_json(record: Mapping[str, Any], batch: str | None) -> str:
    data: dict[str, Any] = {"schema": SCHEMA_VERSION, "generator": "ideogram-pipeline"}
    for name in RECORD_FIELDS:
        value = batch if name == "batch" and batch is not None else record.get(name)
        if value is not None:
            data[name] = value
    if "resolution" in data:
        data["size"] = data["resolution"]
    return json.dumps(data, ensure_ascii=False, sort_keys=False, default=_json_default)


def _keyword(data: bytes) -> bytes:
    return data.split(b"\x00", 1)[0]


def embed_metadata(png: bytes, record: Mapping[str, Any], batch: str | None = None) -> bytes:
    """``png`` with our two text chunks inserted before ``IEND`` (earlier copies replaced).

    ``batch`` overrides ``record["batch"]`` (the engine's records carry the batch only as
    a partition key). Raises :class:`PngError` when ``png`` is malformed.
    """
    view = memoryview(png)  # the kept chunks are copied once, by the join
    kept: list[memoryview] = []
    iend: bytes | None = None
    for kind, data, start, end in _chunks(png):
        if kind == b"IEND":
            iend = png[start:end]
        elif kind in _TEXT_TYPES and _keyword(bytes(data)) in _OUR_KEYWORDS:
            continue
        else:
            kept.append(view[start:end])
    assert iend is not None  # _chunks raises when IEND is missing
    return b"".join(
        [
            PNG_SIGNATURE,
            *kept,
            _text_chunk(PARAMETERS_KEYWORD, parameters_text(record, batch)),
            _itxt_chunk(JSON_KEYWORD, _record_json(record, batch)),
            iend,
        ]
    )


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise PngError(f"compressed text chunk inflates beyond {MAX_TEXT_BYTES} bytes")
    return out


def _decode_text(kind: bytes, data: bytes) -> tuple[str, str]:
    keyword, _, rest = data.partition(b"\x00")
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        return name, _inflate(rest[1:]).decode("latin-1")
    if len(rest) < 2:
        raise PngError(f"iTXt chunk {name!r} is truncated")
    compressed, body = rest[0], rest[2:]
    _language, _, body = body.partition(b"\x00")
    _translated, _, text = body.partition(b"\x00")
    if compressed:
        text = _inflate(text)
    return name, text.decode("utf-8", errors="replace")


def read_metadata(png: bytes) -> dict[str, Any]:
    """The text chunks of ``png``.

    Returns ``{"parameters": str | None, "record": dict | None, "text": {keyword: text}}``;
    ``record`` is our JSON chunk parsed, ``text`` holds every text chunk (ours included).
    A chunk whose CRC does not match raises :class:`PngError`: the file was damaged.
    """
    text: dict[str, str] = {}
    for kind, data, start, end in _chunks(png):
        if kind not in _TEXT_TYPES:
            continue
        (crc,) = struct.unpack(">I", png[end - 4 : end])
        if zlib.crc32(png[start + 4 : end - 4]) != crc:
            raise PngError(f"{kind.decode()} chunk at byte {start} has a bad CRC")
        name, value = _decode_text(kind, bytes(data))
        text.setdefault(name, value)
    record: dict[str, Any] | None = None
    if JSON_KEYWORD in text:
        try:
            parsed = json.loads(text[JSON_KEYWORD])
        except json.JSONDecodeError as exc:
            raise PngError(f"the {JSON_KEYWORD} chunk is not valid JSON: {exc}") from None
        record = parsed if isinstance(parsed, dict) else None
    return {"parameters": text.get(PARAMETERS_KEYWORD), "record": record, "text": text}


def prepare_for_storage(png: bytes, record: dict[str, Any], batch: str) -> bytes:
    """The engine's one hook: the bytes to store for a downloaded image.

    Sets ``record["download_sha256"]`` (the bytes as Ideogram sent them, which is what a
    reproduction compares) and returns ``png`` with the text chunks embedded. A PNG whose
    chunks cannot be parsed is stored exactly as downloaded: a paid image is never dropped
    for want of metadata. The perceptual hash is not in the chunks: the engine computes it
    beside this, in a process of its own (``runs/fingerprinting.py``).
    """
    record["download_sha256"] = hashlib.sha256(png).hexdigest()
    try:
        return embed_metadata(png, record, batch)
    except PngError:
        return png

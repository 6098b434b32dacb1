"""Deterministic, realistic-sized PNGs for the simulator, produced in a few milliseconds.

Why this shape: a pipeline test must move image-sized payloads (about 1 MB at 1024x1024,
like Ideogram's PNGs) through download, checksum and storage, yet a test run renders
thousands of them; and a person looking at a contact sheet or the Dagster UI must tell the
images apart. Compressing 3 MB of pixels per image costs ~60 ms, so images are built from
*bands* of rows instead:

* a small pool of texture bands per image width is generated (gradient plus noise, PNG
  ``Sub`` filter) and deflate-compressed once, each as a byte-aligned, non-final segment:
  the incompressible noise is what gives the file its realistic size;
* an image is one unique band derived from the SHA-256 of its inputs, pool bands chosen by
  a generator seeded with that digest, and across the middle a caption panel
  (:mod:`ideogram_pipeline.simulator.caption`): "SIMULATED", the prompt's text (wrapped,
  cut with "..." when long) and a line naming model, seed, resolution and image index, on
  a dark colour taken from the digest. The panel is flat colour and text, so it
  compresses fast;
* the compressed segments are concatenated into one zlib stream (deflate allows this after
  a sync flush), and the Adler-32 is combined from the segments' checksums.

So equal inputs give byte-identical PNGs (with the same Pillow and its bundled font),
different inputs give different PNGs (the unique band, the band order and the panel all
follow the inputs), and rendering costs a few milliseconds. The result is a valid PNG:
signature, IHDR, tEXt, IDAT, IEND, CRCs.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import struct
import threading
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from ideogram_pipeline.simulator.caption import Caption, render_caption

__all__ = [
    "PNG_SIGNATURE",
    "ImageKey",
    "is_transparent_model",
    "pixel_size",
    "render_png",
    "render_transparent_png",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAND_ROWS = 16
POOL_SIZE = 32
#: Two noise bits per channel: after the Sub filter about 1 MB per 1024x1024 image.
NOISE_MASK = 0x03
_POOL_SEED = 0x1DE06A4
_ADLER_BASE = 65521
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" level hint; % 31 == 0
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # a final fixed-Huffman block holding only end-of-block


@dataclass(frozen=True)
class ImageKey:
    """Everything that determines an image's bytes; equal keys give identical PNGs.

    ``index`` is the image's position in its response: the images of one request share a
    seed but are different pictures, as at Ideogram. An operation on a stored image (issue
    19) adds ``source``, a digest of the source image's bytes and the operation's
    parameters, and may fix the pixel size (``pixels``, ``WxH``: an upscale is twice its
    source, whatever ``image_scale``); both are left out of the digest when unset, so
    generated images keep their bytes.
    """

    model: str
    prompt: str
    seed: int
    resolution: str
    style_type: str | None = None
    negative_prompt: str | None = None
    index: int = 0
    source: str | None = None
    pixels: str | None = None

    def digest(self) -> bytes:
        fields = {k: v for k, v in asdict(self).items() if k not in ("source", "pixels")}
        fields.update({k: v for k in ("source", "pixels") if (v := getattr(self, k)) is not None})
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).digest()


@dataclass(frozen=True)
class _Segment:
    """One band: its raw-deflate bytes (sync-flushed), Adler-32 and raw length."""

    data: bytes
    adler: int
    length: int


def pixel_size(resolution: str, scale: float = 1.0) -> tuple[int, int]:
    """Pixel width and height for a ``WxH`` resolution shrunk by ``scale`` (at least 8 px)."""
    width, height = (int(part) for part in resolution.lower().split("x"))
    return max(8, round(width * scale)), max(8, round(height * scale))


def _adler32_combine(adler1: int, adler2: int, length2: int) -> int:
    """zlib's ``adler32_combine``: the checksum of A+B from those of A and B."""
    rem = length2 % _ADLER_BASE
    a1, b1 = adler1 & 0xFFFF, adler1 >> 16
    a2, b2 = adler2 & 0xFFFF, adler2 >> 16
    s1 = (a1 + a2 - 1) % _ADLER_BASE
    s2 = (rem * a1 + b1 + b2 - rem) % _ADLER_BASE
    return (s2 << 16) | s1


def _sub_filtered(pixels: npt.NDArray[np.uint8]) -> bytes:
    """PNG scanlines with filter type 1 (Sub) for ``(rows, width, 3)`` uint8 pixels.

    Each byte minus the byte one pixel to the left, modulo 256: flat colour becomes zeros.
    """
    rows, width, _ = pixels.shape
    line = pixels.reshape(rows, width * 3)
    out = np.empty((rows, width * 3 + 1), dtype=np.uint8)
    out[:, 0] = 1
    out[:, 1:4] = line[:, :3]
    out[:, 4:] = line[:, 3:] - line[:, :-3]
    return out.tobytes()


def _band_rows(rng: np.random.Generator, width: int, rows: int, noise_mask: int) -> bytes:
    """``rows`` filtered scanlines: a random diagonal gradient plus low-bit noise."""
    start = rng.integers(0, 256, 3).astype(np.int32)
    slope_x = rng.integers(-2, 3, 3).astype(np.int32)
    slope_y = rng.integers(-3, 4, 3).astype(np.int32)
    x = np.arange(width, dtype=np.int32)[None, :, None]
    y = np.arange(rows, dtype=np.int32)[:, None, None]
    pixels = start + (x * slope_x) // 4 + y * slope_y
    noise = np.frombuffer(rng.bytes(rows * width * 3), dtype=np.uint8).reshape(rows, width, 3)
    return _sub_filtered((pixels & 0xFF).astype(np.uint8) + (noise & noise_mask))


def _compress_segment(raw: bytes, level: int) -> _Segment:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    data = compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return _Segment(data=data, adler=zlib.adler32(raw), length=len(raw))


_pool_lock = threading.Lock()


@lru_cache(maxsize=16)
def _pool(width: int) -> tuple[_Segment, ...]:
    """The shared bands for one width, built once per process (about 30 ms at 1024 px)."""
    with _pool_lock:
        return tuple(
            _compress_segment(
                _band_rows(
                    np.random.default_rng([_POOL_SEED, width, i]), width, BAND_ROWS, NOISE_MASK
                ),
                level=1,
            )
            for i in range(POOL_SIZE)
        )


def _caption(key: ImageKey, digest: bytes) -> Caption:
    """The panel's words, and a dark background colour taken from the digest."""
    hue, value = digest[0] / 255, 0.22 + digest[1] / 255 * 0.12
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.55, value)
    return Caption(
        label="SIMULATED",
        text=key.prompt,
        footer=f"{key.model} · seed {key.seed} · {key.resolution} · image {key.index + 1}",
        background=(round(red * 255), round(green * 255), round(blue * 255)),
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


@lru_cache(maxsize=24)
def render_png(key: ImageKey, width: int, height: int) -> bytes:
    """The PNG for ``key`` at ``width`` x ``height`` pixels (RGB, 8 bit).

    From the top: the unique band, texture bands, the caption panel (about the middle),
    texture bands to the bottom.
    """
    digest = key.digest()
    rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    segments: list[_Segment] = []
    # The unique band carries the digest into the pixels; stronger noise makes it visible.
    first_rows = min(BAND_ROWS, height)
    segments.append(_compress_segment(_band_rows(rng, width, first_rows, 0x0F), level=1))
    panel = render_caption(_caption(key, digest), width, height - first_rows)
    panel_rows = 0 if panel is None else panel.shape[0]
    pool = _pool(width)
    above = max(0, (height - panel_rows) // 2 - first_rows) // BAND_ROWS
    segments.extend(pool[int(i)] for i in rng.integers(0, POOL_SIZE, above))
    if panel is not None:
        segments.append(_compress_segment(_sub_filtered(panel), level=1))
    remaining = height - first_rows - above * BAND_ROWS - panel_rows
    full_bands, tail_rows = divmod(remaining, BAND_ROWS)
    segments.extend(pool[int(i)] for i in rng.integers(0, POOL_SIZE, full_bands))
    if tail_rows:
        segments.append(_compress_segment(_band_rows(rng, width, tail_rows, NOISE_MASK), level=1))

    adler = 1
    for segment in segments:
        adler = _adler32_combine(adler, segment.adler, segment.length)
    stream = b"".join(
        [_ZLIB_HEADER, *(s.data for s in segments), _FINAL_EMPTY_BLOCK, struct.pack(">I", adler)]
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = b"Software\x00ideogram-pipeline simulator " + digest.hex()[:16].encode("ascii")
    return b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"tEXt", text),
            _chunk(b"IDAT", stream),
            _chunk(b"IEND", b""),
        ]
    )


def is_transparent_model(model: str) -> bool:
    """Whether images of ``model`` (a product name such as ``ideogram-3-transparent``) have
    a transparent background."""
    return model.endswith("-transparent")


@lru_cache(maxsize=8)
def render_transparent_png(key: ImageKey, width: int, height: int) -> bytes:
    """:func:`render_png`'s picture on a transparent background (RGBA): the subject is an
    opaque ellipse, the corners are fully transparent, as a cut-out product shot would be."""
    from PIL import Image, ImageDraw

    with Image.open(io.BytesIO(render_png(key, width, height))) as opened:
        picture = opened.convert("RGBA")
    alpha = Image.new("L", (width, height), 0)
    ImageDraw.Draw(alpha).ellipse((0, 0, width - 1, height - 1), fill=255)
    picture.putalpha(alpha)
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)
    return out.getvalue()

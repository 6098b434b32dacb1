"""Perceptual hashes of images, and decoding untrusted image bytes without blowing up.

A SHA-256 says "same bytes"; a perceptual hash (``imagehash.phash``: a 64-bit DCT hash of
the picture shrunk to 32x32 greys) says "looks the same", which is what a person means by a
duplicate and what a reproduction that is not byte-identical is measured by. Hashes are
stored as 16 hex digits; their distance is the number of differing bits (0..64).

Images come from the network, so decoding is guarded twice: the declared width and height
in the PNG header are checked before Pillow sees the file, and Pillow's own
decompression-bomb limit is set to the same cap, and the size Pillow reads from any format's
header is checked before a single pixel is decoded.
"""

from __future__ import annotations

import io
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "ImageTooLarge",
    "hamming",
    "open_image",
    "perceptual_hash",
]

#: Ideogram's largest outputs are a few megapixels; anything far beyond is not an image of ours.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
#: Bytes we are willing to hand to a decoder at all.
MAX_IMAGE_BYTES = 128 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageTooLarge(ValueError):
    """The image is larger than the caps allow (a decompression bomb, or not ours)."""


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR, or ``None`` for other formats."""
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def open_image(data: bytes) -> PILImage.Image:
    """Decode ``data`` fully, refusing anything beyond :data:`MAX_IMAGE_PIXELS`.

    Raises :class:`ImageTooLarge` for oversized input and Pillow's errors (``OSError``,
    ``ValueError``) for undecodable input.
    """
    from PIL import Image

    if len(data) > MAX_IMAGE_BYTES:
        raise ImageTooLarge(f"image of {len(data)} bytes exceeds {MAX_IMAGE_BYTES}")
    size = _png_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"image of {size[0]}x{size[1]} pixels exceeds {MAX_IMAGE_PIXELS}")
    # Pillow warns above this many pixels and refuses above twice as many. Our own check
    # right after opening (before any pixel is decoded) refuses anything above it, so no
    # warning filter is needed (changing filters is not thread-safe, and this runs in
    # worker threads).
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"image of {image.width}x{image.height} pixels is too large")
    image.load()
    return image


def perceptual_hash(data: bytes) -> str | None:
    """The image's pHash as 16 hex digits, or ``None`` when it cannot be decoded safely.

    ``None`` rather than an exception: a missing fingerprint must never cost a stored image.
    """
    import imagehash

    try:
        image = open_image(data)
    except (ImageTooLarge, OSError, ValueError, SyntaxError):
        return None
    return str(imagehash.phash(image))


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes of equal length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths: {a!r}, {b!r}")
    return (int(a, 16) ^ int(b, 16)).bit_count()

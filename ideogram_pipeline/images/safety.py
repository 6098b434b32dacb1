"""Checks on image bytes from outside, before they are stored or decoded.

Downloaded bytes are untrusted. Before storing, :func:`check_png` proves they are a whole PNG
(signature, ``IHDR`` first, ``IEND`` last) whose declared canvas is plausible, without
decoding a pixel: a small PNG can declare a 100,000 x 100,000 canvas (a decompression bomb),
and such a file is refused here rather than stored for a thumbnail or perceptual hash to
choke on later. Code that does decode pixels uses ``fingerprint.open_image``, which applies
the same pixel limit inside Pillow.
"""

from __future__ import annotations

import struct

# One pixel limit for checking and for decoding (Ideogram's largest output is far below it).
from ideogram_pipeline.images.fingerprints import MAX_IMAGE_PIXELS

__all__ = [
    "MAX_IMAGE_PIXELS",
    "PNG_SIGNATURE",
    "ImageRejected",
    "check_png",
    "png_size",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


class ImageRejected(ValueError):
    """The bytes are not an image we are willing to store or decode; the message says why.

    ``transient`` marks damage a second download may not have (a truncated body), as
    opposed to what the image itself declares (an absurd size), which never changes.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the ``IHDR`` chunk, which the PNG spec requires first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageRejected("PNG has no IHDR chunk first")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_png(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Raise :class:`ImageRejected` unless ``data`` is a complete, plausibly sized PNG.

    Returns ``(width, height)``. Cheap: no pixel is decoded.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ImageRejected("download is not a PNG (bad signature)", transient=True)
    if not data.endswith(PNG_END):
        raise ImageRejected("PNG is truncated (no IEND chunk)", transient=True)
    width, height = png_size(data)
    if width == 0 or height == 0:
        raise ImageRejected(f"PNG declares an empty canvas ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"PNG declares {width}x{height} pixels, more than the {max_pixels} allowed "
            "(a decompression bomb?)"
        )
    return width, height

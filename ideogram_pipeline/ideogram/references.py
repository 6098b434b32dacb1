"""Reference images (style, character, character mask): what a request carries and the
limits Ideogram sets on them.

Why here: the batch reader checks the limits before anything is sent (a bad reference is
a ``rejected`` row, never a paid failure), and the bundled simulator refuses the same
bodies, so both read one set of rules. The limits are the spec's words on
``GenerateImageRequestV3``: "maximum total size 10MB across all style references" (and the
same for character references), "currently only supports 1 character reference image",
masks "must match the number of character_reference_images" and be "of the same
dimensions as the corresponding character reference image", every image "in JPEG, PNG or
WebP format".

A request carries :class:`ReferenceImage` values: the role and the SHA-256 of the bytes,
stored once under ``references/<sha256>.<ext>`` in the storage root. The hash is what a
request hash covers, so the same bytes are the same request whatever file they came from.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_CHARACTER_IMAGES",
    "MAX_TOTAL_BYTES",
    "REFERENCE_PREFIX",
    "ROLES",
    "WIRE_NAMES",
    "ReferenceImage",
    "Role",
    "image_dimensions",
    "limit_errors",
    "sniff_image",
]

Role = Literal["style", "character", "character_mask"]
ROLES: tuple[Role, ...] = ("style", "character", "character_mask")
#: The batch column of each role (the mask column is singular, as a person writes it).
COLUMNS: dict[str, str] = {
    "style": "style_reference_images",
    "character": "character_reference_images",
    "character_mask": "character_reference_mask",
}
#: The multipart field of each role on ``POST /v1/ideogram-v3/generate``.
WIRE_NAMES: dict[str, str] = {
    "style": "style_reference_images",
    "character": "character_reference_images",
    "character_mask": "character_reference_images_mask",
}
#: Spec: "maximum total size 10MB across all style references" (and character references).
MAX_TOTAL_BYTES = 10 * 1024 * 1024
#: Spec: "currently only supports 1 character reference image".
MAX_CHARACTER_IMAGES = 1
#: Where the storage root keeps reference bytes, content-addressed.
REFERENCE_PREFIX = "references/"

_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
)


def sniff_image(data: bytes) -> tuple[str, str] | None:
    """``(media type, extension)`` of PNG, JPEG or WebP bytes; ``None`` for anything else."""
    for magic, media_type, extension in _FORMATS:
        if data.startswith(magic):
            return media_type, extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None


@dataclass(frozen=True)
class ReferenceImage:
    """One reference image of a request: its role and the SHA-256 of its bytes."""

    role: Role
    sha256: str
    extension: str

    @property
    def key(self) -> str:
        """The storage key of its bytes."""
        return f"{REFERENCE_PREFIX}{self.sha256}.{self.extension}"

    @property
    def media_type(self) -> str:
        return {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[self.extension]

    @property
    def wire_name(self) -> str:
        return WIRE_NAMES[self.role]


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height of image bytes Pillow can open; ``None`` when it cannot."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


def limit_errors(images: Mapping[Role, Sequence[bytes]]) -> list[tuple[Role, str]]:
    """Every broken limit of one request's reference images, as ``(role, reason)``."""
    errors: list[tuple[Role, str]] = []
    for role in ROLES:
        for number, data in enumerate(images.get(role, ()), start=1):
            if sniff_image(data) is None:
                errors.append((role, f"image {number} is not PNG, JPEG or WebP"))
            elif image_dimensions(data) is None:
                errors.append((role, f"image {number} is not a readable image"))
    for role in ("style", "character"):
        total = sum(len(data) for data in images.get(role, ()))
        if total > MAX_TOTAL_BYTES:
            errors.append(
                (role, f"the images total {total:,} bytes; the limit is {MAX_TOTAL_BYTES:,}")
            )
    characters = images.get("character", ())
    if len(characters) > MAX_CHARACTER_IMAGES:
        errors.append(
            ("character", f"{len(characters)} images; Ideogram takes {MAX_CHARACTER_IMAGES}")
        )
    masks = images.get("character_mask", ())
    if masks and len(masks) != len(characters):
        errors.append(
            (
                "character_mask",
                f"{len(masks)} mask(s) for {len(characters)} character image(s); "
                "give one mask per character image",
            )
        )
    for number, (mask, image) in enumerate(zip(masks, characters, strict=False), start=1):
        mask_size, image_size = image_dimensions(mask), image_dimensions(image)
        if mask_size and image_size and mask_size != image_size:
            errors.append(
                (
                    "character_mask",
                    f"mask {number} is {mask_size[0]}x{mask_size[1]} but its character image is "
                    f"{image_size[0]}x{image_size[1]}; a mask has its image's size",
                )
            )
    return errors

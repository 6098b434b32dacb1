"""Operations on a stored image (issue 19): which endpoint each one is, what it takes, what
it costs, and what comes back.

Why a table: the batch reader (which columns a row of an operation may fill), the client
(which path, which multipart part carries the image, how the fields are spelt), the price
list and the bundled simulator must agree, and an operation added in one place only would
be refused or mispriced in another.

Endpoints are the published spec's (``/upscale``, ``/describe``, ``/v1/ideogram-v3/remix``,
``/reframe``, ``/replace-background``) plus Ideogram's remove-background, which the bundled
spec predates: ``POST /v1/remove-background`` (synchronous) and its v2 path
``POST /v2/image/remove-background/ideogram-1`` (asynchronous with a ``generation_id``, and
a ``dry_run`` quote), per developer.ideogram.ai (2026). None of the others documents a v2
path or ``dry_run`` in our references, so they are sent synchronously and priced from the
table: a crash while one is in flight can leave its row ``unknown``, as for a legacy model.

Remix, reframe and replace-background run Ideogram 3.0: their style controls are the
``V_3`` generate fields (same names, same spellings) and they bill as a 3.0 image of their
rendering speed. Upscale, describe and remove-background bill a flat fee per input image
(Ideogram's pricing page; upscale's ``num_images`` outputs are billed each, as the
simulator does, which is the same for the usual one). Upscale $0.06 and describe $0.01 are
the prices Ideogram published for those endpoints; remove-background's $0.01 is its docs'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "GENERATE",
    "OPERATIONS",
    "Operation",
    "PromptUse",
    "SourceImage",
    "operation",
]

GENERATE = "generate"

PromptUse = Literal["required", "optional", "none"]

#: The 3.0 style controls remix, reframe and replace-background share with generation.
_STYLE = frozenset({"style_preset", "color_palette", "style_codes", "rendering_speed"})


@dataclass(frozen=True)
class Operation:
    """One operation as a batch row names it (``operation`` column) and as it is sent."""

    name: str
    #: The synchronous v1 path (multipart/form-data, the image as a file part).
    path: str
    #: The multipart part that carries the source image.
    image_part: str
    prompt: PromptUse
    #: Request attributes (batch columns) the operation takes besides the prompt.
    fields: frozenset[str]
    #: Of those, the ones a row must set.
    required: frozenset[str] = frozenset()
    #: False for ``describe``: it answers with text, and bills per input.
    makes_images: bool = True
    #: A flat USD fee per input; None: priced as an Ideogram 3.0 image of its speed.
    flat_price_usd: float | None = None
    #: The asynchronous v2 path (``async`` form field, ``dry_run`` quotes), when documented.
    v2_path: str | None = None
    #: The largest source image the endpoint takes.
    max_image_bytes: int = 10 * 1024 * 1024

    @property
    def one_image(self) -> bool:
        """Whether the endpoint always answers one image (no ``num_images``)."""
        return "num_images" not in self.fields


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation(
            "upscale",
            "/upscale",
            "image_file",
            "optional",
            frozenset({"resemblance", "detail", "magic_prompt", "num_images", "seed"}),
            flat_price_usd=0.06,
        ),
        Operation(
            "describe",
            "/describe",
            "image_file",
            "none",
            frozenset(),
            makes_images=False,
            flat_price_usd=0.01,
        ),
        Operation(
            "remix",
            "/v1/ideogram-v3/remix",
            "image",
            "required",
            _STYLE
            | {
                "image_weight",
                "seed",
                "aspect_ratio",
                "resolution",
                "magic_prompt",
                "negative_prompt",
                "num_images",
                "style_type",
            },
        ),
        Operation(
            "reframe",
            "/v1/ideogram-v3/reframe",
            "image",
            "none",
            _STYLE | {"resolution", "num_images", "seed"},
            required=frozenset({"resolution"}),
        ),
        Operation(
            "replace_background",
            "/v1/ideogram-v3/replace-background",
            "image",
            "required",
            _STYLE | {"magic_prompt", "num_images", "seed"},
        ),
        Operation(
            "remove_background",
            "/v1/remove-background",
            "image",
            "none",
            frozenset(),
            flat_price_usd=0.01,
            v2_path="/v2/image/remove-background/ideogram-1",
            max_image_bytes=25 * 1024 * 1024,
        ),
    )
}


def operation(name: str) -> Operation:
    """The operation called ``name``; a ``KeyError`` naming the known ones otherwise."""
    try:
        return OPERATIONS[name]
    except KeyError:
        known = ", ".join([GENERATE, *OPERATIONS])
        raise KeyError(f"unknown operation {name!r}; one of {known}") from None


@dataclass(frozen=True)
class SourceImage:
    """The image an operation works on, resolved: the SHA-256 of its bytes (what the
    request hash covers, so the same bytes are the same request however they were named),
    where those bytes are kept under the storage root, and the record it is, if any."""

    sha256: str
    #: Storage key of the bytes: the record's ``images/...`` object, or
    #: ``references/<sha256>.<ext>`` for a file the batch named.
    key: str
    media_type: str
    #: The stored record whose image this is (lineage: the result's ``derived_from``).
    record_id: str | None = None

    @property
    def filename(self) -> str:
        """The multipart file name: the content hash, so equal bytes make equal bodies."""
        extension = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
        return f"{self.sha256}.{extension.get(self.media_type, 'png')}"

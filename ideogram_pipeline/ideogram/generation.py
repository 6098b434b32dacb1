"""What is asked of Ideogram and what comes back: a row's request, its images, the answer.

The metadata record these become is :class:`~ideogram_pipeline.history.schema.GenerationRecord`.

They are frozen so that a value handed to a worker cannot change behind the engine's back,
and they carry canonical forms (``16x9`` aspect ratios, ``1024x1024`` resolutions,
upper-case enums) so that every endpoint-specific spelling lives in the client alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

# The model lists come from the capability table (derived from Ideogram's schemas); they are
# re-exported here because records are where the rest of the pipeline looks for them.
from ideogram_pipeline.ideogram.capabilities import (
    LEGACY_MODELS,
    MODELS,
    V2_ONLY_MODELS,
    V3_MODEL,
)
from ideogram_pipeline.ideogram.operations import GENERATE, SourceImage
from ideogram_pipeline.ideogram.references import ReferenceImage

__all__ = [
    "CONTROL_FIELDS",
    "CONTROL_SETTINGS",
    "LEGACY_MODELS",
    "MODELS",
    "OPERATION_SETTINGS",
    "STATUSES",
    "V2_ONLY_MODELS",
    "V3_MODEL",
    "GeneratedImage",
    "GenerationRequest",
    "GenerationResponse",
    "RejectedRow",
    "Status",
]


#: Issue 18's controls that are one value each: a batch column, a request attribute and a
#: history column of the same name.
CONTROL_SETTINGS = (
    "style_preset",
    "style_codes",
    "color_palette",
    "transparent",
    "quality",
    "size",
    "enable_copyright_detection",
)
#: Request attributes added by issue 18; omitted from :meth:`GenerationRequest.parameters`
#: (and so from request hashes) while unset.
CONTROL_FIELDS = (*CONTROL_SETTINGS, "references")
#: Issue 19's operation settings, a batch column and request attribute each; omitted from
#: :meth:`GenerationRequest.parameters` while unset, so generation hashes are unchanged.
OPERATION_SETTINGS = ("image_weight", "resemblance", "detail")

Status = Literal["stored", "unsafe", "rejected", "failed", "unknown"]
#: ``unknown``: a request was sent but no answer was recorded before a crash, so it may have
#: been billed; it is sent again only when the user allows it (``--resend-unknown``).
STATUSES: tuple[Status, ...] = ("stored", "unsafe", "rejected", "failed", "unknown")


@dataclass(frozen=True)
class GenerationRequest:
    """One valid CSV row, ready to send.

    ``row`` is the 1-based CSV data row (the header is row 0), so an error message points at
    the line a person sees in a spreadsheet, minus the header.
    """

    row: int
    prompt: str
    model: str = V3_MODEL
    num_images: int = 1
    negative_prompt: str | None = None
    style_type: str | None = None
    aspect_ratio: str | None = None  # canonical "16x9"
    resolution: str | None = None  # canonical "1024x1024"
    rendering_speed: str | None = None  # V_3 only
    magic_prompt: str | None = None  # AUTO / ON / OFF
    seed: int | None = None
    tags: tuple[str, ...] = ()
    # Issue 18's controls (canonical forms: ideogram/controls.py). Unset ones are left out
    # of :meth:`parameters`, so requests written before they existed keep their hashes.
    style_preset: str | None = None  # V_3: a StylePresetV3 name
    style_codes: tuple[str, ...] | None = None  # V_3: upper-case 8-digit hex codes
    color_palette: str | None = None  # V_3: "EMBER" or "#RRGGBB[:weight]|..."
    transparent: bool | None = None  # True: the transparent-background endpoint
    quality: str | None = None  # ideogram-4-5: LOW / MEDIUM / HIGH
    size: str | None = None  # ideogram-4-5: "auto" or "WxH"
    enable_copyright_detection: bool | None = None  # ideogram-4-5
    #: Reference images, resolved: roles and SHA-256s of bytes in ``<root>/references/``.
    references: tuple[ReferenceImage, ...] | None = None
    #: Reference images as the batch named them, ``(role, text)``, until
    #: :func:`ideogram_pipeline.batches.references.resolve_references` reads and stores
    #: them; never part of :meth:`parameters` (the bytes are, through ``references``).
    reference_sources: tuple[tuple[str, str], ...] = ()
    # Issue 19: an operation on a stored image (ideogram/operations.py) instead of a
    # generation. ``source`` is the image, resolved; ``source_text`` how the batch named it,
    # until :func:`ideogram_pipeline.batches.sources.resolve_sources` finds it (never part
    # of :meth:`parameters`: the bytes are, through ``source``).
    operation: str = GENERATE
    source: SourceImage | None = None
    source_text: str = ""
    image_weight: int | None = None  # remix: 1..100
    resemblance: int | None = None  # upscale: 1..100
    detail: int | None = None  # upscale: 1..100

    @property
    def is_legacy(self) -> bool:
        return self.model in LEGACY_MODELS

    @property
    def is_operation(self) -> bool:
        """Whether this row works on a stored image rather than generating one."""
        return self.operation != GENERATE

    def parameters(self) -> dict[str, Any]:
        """The fields that determine what Ideogram generates (no row number, no tags)."""
        data = asdict(self)
        for key in ("row", "tags", "reference_sources", "source_text"):
            data.pop(key)
        for key in (*CONTROL_FIELDS, *OPERATION_SETTINGS, "source"):
            if data[key] is None:
                del data[key]
        if self.operation == GENERATE:
            del data["operation"]
        if self.source is not None:
            # The bytes are the request; where they are kept and which record they came
            # from are not (the same image named by path or by id is the same work).
            data["source"] = self.source.sha256
        if self.references:
            # The bytes (and their role) are the request; the file ending is only storage.
            data["references"] = [[image.role, image.sha256] for image in self.references]
        return data

    def request_hash(self) -> str:
        """Canonical hash of the request: equal hashes mean the same paid work."""
        return self._request_hash

    @cached_property
    def _request_hash(self) -> str:
        # Asked for a dozen times per row on the event loop (ledger keys, the recorder,
        # duplicates, repeats); a frozen request's hash is worked out once.
        canonical = json.dumps(self.parameters(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RejectedRow:
    """A CSV row that was never sent, with the field and the reason a person can act on."""

    row: int
    field: str
    reason: str
    prompt: str = ""
    tags: tuple[str, ...] = ()

    @property
    def error(self) -> str:
        return f"row {self.row}: field '{self.field}': {self.reason}"


@dataclass(frozen=True)
class GeneratedImage:
    """One item of an API response's ``data`` list.

    ``url`` is ``None`` whenever the API withheld the image, whether it sent null, an empty
    string or no key at all.
    """

    prompt: str
    resolution: str | None
    is_image_safe: bool
    seed: int | None
    url: str | None
    style_type: str | None = None

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> GeneratedImage:
        url = item.get("url") or None
        return cls(
            prompt=str(item.get("prompt") or ""),
            resolution=item.get("resolution"),
            is_image_safe=bool(item.get("is_image_safe", url is not None)),
            seed=item.get("seed"),
            url=url,
            style_type=item.get("style_type"),
        )


@dataclass(frozen=True)
class GenerationResponse:
    """A successful generate call: when Ideogram says it ran, and what came back."""

    created: str | None
    images: tuple[GeneratedImage, ...] = field(default_factory=tuple)
    attempts: int = 1
    generation_id: str | None = None
    #: ``describe``'s answer: one text per description Ideogram gave (no images).
    descriptions: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> GenerationResponse:
        data = body.get("data") or []
        described = body.get("descriptions") or []
        return cls(
            created=body.get("created"),
            images=tuple(GeneratedImage.from_api(item) for item in data),
            generation_id=body.get("generation_id"),
            descriptions=tuple(str(item.get("text") or "") for item in described),
        )

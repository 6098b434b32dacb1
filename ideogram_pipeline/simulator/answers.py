"""What the simulator's answers say, shared by every endpoint: nominal resolutions, the
Magic Prompt expansion, the auto style, and the body hash billing is counted by.

Kept apart from the handlers (``app.py``, ``v2.py``, ``operations.py``) so each of them reads
the same wording without importing the others.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "ASPECT_RESOLUTIONS",
    "AUTO_STYLES",
    "DEFAULT_RESOLUTION",
    "body_hash",
    "hash_text",
    "magic_prompt",
    "nominal_resolution",
]

#: Nominal resolution per aspect ratio (all values are ResolutionV3 members).
ASPECT_RESOLUTIONS = {
    "1x1": "1024x1024",
    "16x9": "1312x736",
    "9x16": "736x1312",
    "4x3": "1152x864",
    "3x4": "864x1152",
    "3x2": "1248x832",
    "2x3": "832x1248",
    "16x10": "1280x800",
    "10x16": "800x1280",
    "4x5": "896x1120",
    "5x4": "1120x896",
    "2x1": "1408x704",
    "1x2": "704x1408",
    "3x1": "1536x512",
    "1x3": "512x1536",
}
DEFAULT_RESOLUTION = "1024x1024"
AUTO_STYLES = ("GENERAL", "REALISTIC", "DESIGN", "FICTION")
_EXPANSIONS = (
    "cinematic lighting, rich detail, balanced composition, soft depth of field",
    "vivid colours, crisp focus, dramatic perspective, high dynamic range",
    "muted palette, gentle morning light, fine textures, editorial photography",
    "bold graphic shapes, clean lines, studio lighting, striking contrast",
)


def hash_text(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")


def magic_prompt(prompt: str, option: str | None) -> str:
    """The prompt Ideogram reports back: expanded for ON, and for short prompts on AUTO."""
    mode = (option or "AUTO").upper()
    if mode == "OFF" or (mode == "AUTO" and len(prompt.split()) >= 12):
        return prompt
    return f"{prompt.rstrip(' .')}. {_EXPANSIONS[hash_text(prompt) % len(_EXPANSIONS)]}"


def body_hash(body: Any) -> str:
    """SHA-256 of a request body in canonical JSON (file parts are placeholders carrying
    their bytes' hash), for ``stats.billed_by_body_hash``."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def nominal_resolution(fields: dict[str, Any]) -> str:
    """Nominal ``WxH`` from ``resolution`` or ``aspect_ratio`` (either endpoint's spelling)."""
    resolution = fields.get("resolution")
    if resolution:
        return str(resolution).removeprefix("RESOLUTION_").replace("_", "x")
    aspect = fields.get("aspect_ratio")
    if aspect:
        return ASPECT_RESOLUTIONS[str(aspect).removeprefix("ASPECT_").replace("_", "x")]
    return DEFAULT_RESOLUTION

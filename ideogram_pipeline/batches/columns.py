"""The column sets a batch file may use, and how header names are read.

Two sets are understood, in one parser:

- **native**: ``prompt`` (required), ``negative_prompt``, ``model``, ``style_type``,
  ``aspect_ratio``, ``resolution``, ``rendering_speed``, ``magic_prompt``, ``seed``,
  ``num_images``, ``tags`` (``|``-separated), and the controls ``style_preset``,
  ``style_codes``, ``color_palette``, ``transparent``, ``quality``, ``size``,
  ``enable_copyright_detection``;
- **ideogram-ui**: the batch CSV of Ideogram's web UI (``prompt``, ``visibility``,
  ``aspect_ratio`` as ``16:9``, ``magic_prompt`` on/off, ``model`` 3.0/2.0/2a/1.0,
  ``num_images``, ``seed_number``, ``rendering`` default/turbo/quality,
  ``negative_prompt``), recognised by a ``visibility``, ``seed_number`` or ``rendering``
  column, so a user's existing Ideogram file works unchanged.
"""

from __future__ import annotations

import re
from typing import Literal

from ideogram_pipeline.ideogram.generation import CONTROL_SETTINGS, OPERATION_SETTINGS

__all__ = [
    "COLUMNS",
    "IDEOGRAM_UI_COLUMNS",
    "NATIVE_COLUMNS",
    "SYNONYMS",
    "UI_MARKERS",
    "BatchFormat",
    "normalise_name",
]

NATIVE_COLUMNS = (
    "prompt",
    "negative_prompt",
    "model",
    "style_type",
    "aspect_ratio",
    "resolution",
    "rendering_speed",
    "magic_prompt",
    "seed",
    "num_images",
    "tags",
    *CONTROL_SETTINGS,  # issue 18's controls (batches/controls.py)
    # Issue 19: an operation on a stored image, its source, its settings (operation_rows.py).
    "operation",
    "image",
    *OPERATION_SETTINGS,
)
IDEOGRAM_UI_COLUMNS = (
    "prompt",
    "visibility",
    "aspect_ratio",
    "magic_prompt",
    "model",
    "num_images",
    "seed_number",
    "rendering",
    "negative_prompt",
)
#: Every column a batch is read from; a ``RejectedRow.field`` is always one of these.
COLUMNS = tuple(dict.fromkeys(NATIVE_COLUMNS + IDEOGRAM_UI_COLUMNS))

BatchFormat = Literal["native", "ideogram-ui"]

#: Columns only Ideogram's UI export has: one of them makes a file ``ideogram-ui``.
UI_MARKERS = ("visibility", "seed_number", "rendering")
#: Pairs of columns that set the same thing; a file may carry only one of each.
SYNONYMS = (("seed", "seed_number"), ("rendering_speed", "rendering"))


def normalise_name(name: str) -> str:
    """A header name as matched: trimmed, case-folded, spaces and dashes as ``_``."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())

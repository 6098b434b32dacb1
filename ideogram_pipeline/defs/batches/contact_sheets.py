"""The batch contact sheet as Dagster materialization metadata (``images/contact_sheets.py``).

Two entries: the stored PNG's location (``MetadataValue.path``) and a Markdown image whose
source is a base64 data URI of a small JPEG, which the UI renders inline, so the grid is
visible on the asset's page without access to the storage root.
"""

import base64
from typing import Any

import dagster as dg

from ideogram_pipeline.images.contact_sheets import SheetTiles, save_contact_sheet
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = ["contact_sheet_metadata"]


def contact_sheet_metadata(
    settings: Settings,
    store: ObjectStore,
    batch: str,
    run_id: str,
    log: Any,
    tiles: SheetTiles | None = None,
) -> dict[str, Any]:
    """Metadata entries for the batch's contact sheet; empty (and a warning) if it fails.
    ``tiles``: the thumbnails the run made as it stored its images.

    A contact sheet is a convenience: failing to draw one must never fail a batch whose
    images are already stored and paid for.
    """
    try:
        sheet = save_contact_sheet(settings, store, batch, run_id, tiles)
    except Exception as exc:
        log.warning(f"contact sheet for batch {batch} not made: {type(exc).__name__}: {exc}")
        return {}
    if sheet is None:
        return {}
    data_uri = "data:image/jpeg;base64," + base64.b64encode(sheet.preview_jpeg).decode("ascii")
    return {
        "contact_sheet": dg.MetadataValue.path(sheet.uri),
        "contact_sheet_preview": dg.MetadataValue.md(
            f"![contact sheet: {sheet.shown} of {sheet.total} images]({data_uri})"
        ),
    }

"""Contact sheets: one thumbnail grid per batch run, so a person can eyeball a batch.

Opening a hundred files to check a batch is what nobody does; a grid of the first few
dozen rows, each labelled with its CSV row number (and its status when there is no image),
shows at a glance whether the prompts did what was meant. The sheet is a PNG saved under
``reports/contact_sheets/<batch>/<run>.png`` in the storage root, and a small JPEG of it is
what the Dagster UI shows inline (``defs/batches/contact_sheets.py``).

Images are read back from the store and decoded with the same guards as the perceptual
hash (``fingerprint.open_image``); an image that cannot be read becomes a labelled tile
rather than a failure: the sheet is a convenience, never a reason for a batch to fail.
A run makes the tiles of the images it stores for the file's first rows as they arrive
(:class:`SheetTiles`, in the run's thread pool while other requests wait on Ideogram), so
drawing the sheet after the last image reads back only the images earlier runs stored.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from PIL import ImageFont

    from ideogram_pipeline.settings import Settings
    from ideogram_pipeline.storage import ObjectStore

__all__ = [
    "CONTACT_SHEETS_PREFIX",
    "ContactSheet",
    "SheetTiles",
    "build_contact_sheet",
    "save_contact_sheet",
]

CONTACT_SHEETS_PREFIX = "reports/contact_sheets"
MAX_TILES = 36
TILE = 160
COLUMNS = 6
CAPTION = 22
TITLE = 28
PREVIEW_WIDTH = 600
_BACKGROUND = (24, 24, 28)
_PLACEHOLDER = (60, 60, 66)
_TEXT = (235, 235, 235)
_STATUS_COLOURS = {"unsafe": (150, 60, 60), "failed": (150, 110, 40), "rejected": (90, 90, 140)}


@dataclass(frozen=True)
class ContactSheet:
    """A saved sheet: where it is, its PNG, a small JPEG preview, and how much it shows."""

    key: str
    uri: str
    png: bytes
    preview_jpeg: bytes
    shown: int
    total: int


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _tile(data: bytes) -> PILImage.Image | None:
    """The image's thumbnail for a sheet; None when it cannot be decoded safely."""
    from ideogram_pipeline.images.fingerprints import open_image

    try:
        image = open_image(data)
        image.thumbnail((TILE, TILE))
        return image.convert("RGB")
    except Exception:  # damaged file, too large: a labelled tile instead
        return None


class SheetTiles:
    """Thumbnails of the images a run stores for the rows a sheet can show, made as they
    are stored instead of read back after the last one.

    A sheet shows the first :data:`MAX_TILES` records of the batch's file by row and image
    index, and every row of the file has at least one record, so only images of the file's
    first :data:`MAX_TILES` rows with an index below it can appear. Thread-safe: tiles are
    added from the run's worker threads.
    """

    def __init__(self, file_rows: Iterable[int]) -> None:
        self.rows = frozenset(sorted(file_rows)[:MAX_TILES])
        self._tiles: dict[str, PILImage.Image] = {}
        self._lock = threading.Lock()

    def wanted(self, row: int, image_index: int) -> bool:
        return row in self.rows and image_index < MAX_TILES

    def add(self, image_key: str, data: bytes) -> None:
        """Make the tile of the image stored under ``image_key`` (its stored ``data``)."""
        if (tile := _tile(data)) is not None:
            with self._lock:
                self._tiles[image_key] = tile

    def get(self, image_key: str) -> PILImage.Image | None:
        with self._lock:
            return self._tiles.get(image_key)


def _thumbnail(
    store: ObjectStore, image_key: str | None, tiles: SheetTiles | None
) -> PILImage.Image | None:
    if not image_key:
        return None
    if tiles is not None and (tile := tiles.get(image_key)) is not None:
        return tile
    try:
        data = store.get_bytes(image_key)
    except Exception:  # missing object, unreadable store: a labelled tile instead
        return None
    return _tile(data)


def _label(record: dict[str, Any]) -> str:
    label = f"row {record['row']}"
    if (record.get("num_images") or 1) > 1 or record.get("image_index"):
        label += f" #{(record.get('image_index') or 0) + 1}"
    if record["status"] != "stored":
        label += f" {record['status']}"
    elif record.get("duplicate_of"):
        label += " (dup)"
    return label


def build_contact_sheet(
    store: ObjectStore,
    records: list[dict[str, Any]],
    *,
    title: str,
    total: int | None = None,
    tiles: SheetTiles | None = None,
) -> bytes:
    """The sheet as PNG bytes for ``records`` (``row``, ``status``, ``image_key``, ...);
    images with a tile in ``tiles`` are not read back from the store."""
    from PIL import Image, ImageDraw

    records = records[:MAX_TILES]
    columns = max(1, min(COLUMNS, len(records)))
    rows = max(1, -(-len(records) // columns))
    width = columns * TILE
    sheet = Image.new("RGB", (max(width, 320), TITLE + rows * (TILE + CAPTION)), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    shown = f"{len(records)} of {total}" if total is not None else str(len(records))
    draw.text((6, 6), f"{title}  ({shown} records)", fill=_TEXT, font=_font(14))
    with ThreadPoolExecutor(max_workers=8) as pool:
        thumbs = list(pool.map(lambda r: _thumbnail(store, r.get("image_key"), tiles), records))
    caption_font = _font(13)
    for number, (record, thumb) in enumerate(zip(records, thumbs, strict=True)):
        left = (number % columns) * TILE
        top = TITLE + (number // columns) * (TILE + CAPTION)
        if thumb is None:
            colour = _STATUS_COLOURS.get(record["status"], _PLACEHOLDER)
            draw.rectangle([left + 2, top + 2, left + TILE - 3, top + TILE - 3], fill=colour)
        else:
            sheet.paste(thumb, (left + (TILE - thumb.width) // 2, top + (TILE - thumb.height) // 2))
        draw.text((left + 4, top + TILE + 3), _label(record), fill=_TEXT, font=caption_font)
    out = io.BytesIO()
    # zlib's fastest level: 0.07 s instead of 0.45 s for a full sheet (Pillow's default is
    # 6), about 15% larger; the sheet is drawn after the run's last image, so it is waited for.
    sheet.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def preview_jpeg(png: bytes, width: int = PREVIEW_WIDTH) -> bytes:
    """A small JPEG of ``png`` for inline display (a data URI in the Dagster UI)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=70, optimize=True)
    return out.getvalue()


def save_contact_sheet(
    settings: Settings,
    store: ObjectStore,
    batch: str,
    run_id: str,
    tiles: SheetTiles | None = None,
) -> ContactSheet | None:
    """Build and store the sheet of ``batch`` as it stands now; ``None`` when it has no rows.
    ``tiles``: thumbnails the run made as it stored its images (:class:`SheetTiles`)."""
    from ideogram_pipeline import history
    from ideogram_pipeline.history.layout import GENERATIONS
    from ideogram_pipeline.safe_output import sql_literal

    # The file's rows, and only the table the sheet reads.
    con = history.connect(settings, store, views=(GENERATIONS,), file_rows_only=True)
    try:
        # Literals, not bound parameters: binding one makes DuckDB import pandas (0.4 s
        # after a run's last image).
        where = f"WHERE batch = {sql_literal(batch)}"
        total_row = con.execute(f"SELECT count(*) FROM generations {where}").fetchone()
        cursor = con.execute(
            'SELECT "row", image_index, num_images, status, image_key, duplicate_of '
            f'FROM generations {where} ORDER BY "row", image_index LIMIT {int(MAX_TILES)}'
        )
        names = [d[0] for d in cursor.description]
        records = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()
    total = int(total_row[0]) if total_row else 0
    if not records:
        return None
    png = build_contact_sheet(store, records, title=f"batch {batch}", total=total, tiles=tiles)
    key = f"{CONTACT_SHEETS_PREFIX}/{batch}/{run_id}.png"
    store.put_bytes(key, png, content_type="image/png")
    return ContactSheet(key, store.uri(key), png, preview_jpeg(png), len(records), total)

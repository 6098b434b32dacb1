"""The caption panel of a simulated image: "SIMULATED", the prompt, and what was asked.

A person scanning a contact sheet or the Dagster UI must tell simulated images apart and
never mistake one for a real generation, so every image carries its prompt as readable
text. Text is drawn with Pillow's bundled font (no font file to ship or find), and each
glyph is rasterised once per size and then pasted: drawing whole strings with
``ImageDraw.text`` rasterises every glyph again and costs about three times as much, while
giving the same pixels.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFont

__all__ = [
    "FOOTER_COLOUR",
    "MIN_CAPTION_WIDTH",
    "PROMPT_LINES",
    "TEXT_COLOUR",
    "Caption",
    "CaptionLayout",
    "GlyphFace",
    "accent",
    "displayable",
    "glyph_face",
    "render_caption",
    "wrap",
]

#: Prompt lines shown at most; a longer prompt ends in "...".
PROMPT_LINES = 6
#: Below this width a caption could not be read; such images get none.
MIN_CAPTION_WIDTH = 96
_ELLIPSIS = "..."
TEXT_COLOUR = (246, 244, 238)
FOOTER_COLOUR = (190, 190, 184)


@dataclass(frozen=True)
class Caption:
    """What the panel says, and its background (a dark colour: light text stays readable)."""

    label: str
    text: str
    footer: str
    background: tuple[int, int, int]


@dataclass(frozen=True)
class _Glyph:
    mask: Image.Image | None  # None for blank glyphs (space)
    offset: tuple[int, int]
    advance: float


class GlyphFace:
    """One size of Pillow's bundled font, each glyph rasterised on first use only."""

    def __init__(self, font: ImageFont.FreeTypeFont) -> None:
        self.font = font
        self.size = int(font.size)
        self._glyphs: dict[str, _Glyph] = {}
        self._lock = threading.Lock()  # FreeType faces are not safe to share across threads

    def glyph(self, char: str) -> _Glyph:
        found = self._glyphs.get(char)
        if found is None:
            with self._lock:
                core, offset = self.font.getmask2(char, mode="L")
                width, height = core.size
                mask = Image.frombytes("L", (width, height), bytes(core)) if width else None
                found = _Glyph(mask, offset, self.font.getlength(char))
            self._glyphs[char] = found
        return found

    def width(self, text: str) -> float:
        return sum(self.glyph(char).advance for char in text)

    def draw(
        self, image: Image.Image, xy: tuple[int, int], text: str, fill: tuple[int, int, int]
    ) -> None:
        x, y = float(xy[0]), xy[1]
        for char in text:
            glyph = self.glyph(char)
            if glyph.mask is not None:
                image.paste(fill, (round(x) + glyph.offset[0], y + glyph.offset[1]), glyph.mask)
            x += glyph.advance


@lru_cache(maxsize=32)
def glyph_face(size: int) -> GlyphFace | None:
    """The bundled font at ``size`` px, or ``None`` when Pillow was built without FreeType."""
    font = ImageFont.load_default(size=size)
    return GlyphFace(font) if isinstance(font, ImageFont.FreeTypeFont) else None


def displayable(text: str) -> str:
    """``text`` in characters the bundled font has: accents dropped (NFKD), so "Pokémon"
    reads "Pokemon" rather than "Pok□mon". Scripts it lacks (CJK, emoji) stay boxes."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def _fit(face: GlyphFace, text: str, width: int) -> str:
    """``text`` cut so that it and "..." fit in ``width`` px."""
    room, used, end = width - face.width(_ELLIPSIS), 0.0, 0
    for char in text:
        used += face.glyph(char).advance
        if used > room:
            break
        end += 1
    return text[:end].rstrip() + _ELLIPSIS


def wrap(text: str, face: GlyphFace, width: int, max_lines: int) -> list[str]:
    """``text`` as at most ``max_lines`` lines of at most ``width`` px, greedy by word.

    Runs of whitespace (newlines included) become one space. A word wider than a line is
    broken by characters; text that does not fit ends in "...", so the reader sees that it
    goes on.
    """
    words = text.split()
    space = face.width(" ")
    lines: list[str] = []
    current, current_width = "", 0.0
    for index, word in enumerate(words):
        word_width = face.width(word)
        if current and current_width + space + word_width <= width:
            current, current_width = f"{current} {word}", current_width + space + word_width
            continue
        if current:
            lines.append(current)
        current, current_width = word, word_width
        while current_width > width and len(lines) < max_lines:
            cut = len(current) - 1
            while cut > 1 and face.width(current[:cut]) > width:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
            current_width = face.width(current)
        if len(lines) >= max_lines:
            rest = " ".join([current, *words[index + 1 :]])
            lines[max_lines - 1] = _fit(face, f"{lines[max_lines - 1]} {rest}", width)
            return lines[:max_lines]
    if current:
        lines.append(current)
    return lines


@dataclass(frozen=True)
class CaptionLayout:
    """Where the panel's text goes, in pixels, scaled from the image width.

    Rows from the top: ``pad``, the label, the prompt lines, the footer (each line
    ``line_height`` apart), then ``pad`` again below the footer.
    """

    text_size: int
    footer_size: int
    margin: int
    line_height: int
    pad: int

    @classmethod
    def for_width(cls, width: int) -> CaptionLayout:
        text_size = max(8, width // 26)
        return cls(
            text_size=text_size,
            footer_size=max(8, width // 39),
            margin=width // 24,
            line_height=text_size * 5 // 4,
            pad=text_size // 2,
        )

    def line_top(self, number: int) -> int:
        """Top of line ``number``: 0 is the label, then the prompt lines, then the footer."""
        return self.pad + number * self.line_height

    def rows(self, prompt_lines: int) -> int:
        return self.line_top(prompt_lines + 1) + self.footer_size * 3 // 2 + self.pad


def accent(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """The label's colour: a light tint of the background."""
    red, green, blue = background
    return min(255, 150 + red), min(255, 150 + green), min(255, 150 + blue)


def render_caption(caption: Caption, width: int, max_rows: int) -> npt.NDArray[np.uint8] | None:
    """The panel as ``(rows, width, 3)`` uint8 pixels, at most ``max_rows`` tall.

    Sizes follow the width (a quarter-scale test image gets a small, still legible
    caption); fewer prompt lines are shown when the height is short, and ``None`` is
    returned when not even one fits or the image is narrower than ``MIN_CAPTION_WIDTH``.
    """
    if width < MIN_CAPTION_WIDTH:
        return None
    layout = CaptionLayout.for_width(width)
    face, small = glyph_face(layout.text_size), glyph_face(layout.footer_size)
    if face is None or small is None:
        return None
    max_lines = min(PROMPT_LINES, (max_rows - layout.rows(0)) // layout.line_height)
    if max_lines < 1:
        return None
    text_width = width - 2 * layout.margin
    lines = wrap(displayable(caption.text), face, text_width, max_lines) or [""]
    panel = Image.new("RGB", (width, layout.rows(len(lines))), caption.background)
    face.draw(panel, (layout.margin, layout.line_top(0)), caption.label, accent(caption.background))
    for number, line in enumerate(lines, start=1):
        face.draw(panel, (layout.margin, layout.line_top(number)), line, TEXT_COLOUR)
    footer_top = layout.line_top(len(lines) + 1)
    small.draw(panel, (layout.margin, footer_top), caption.footer, FOOTER_COLOUR)
    return np.asarray(panel, dtype=np.uint8)

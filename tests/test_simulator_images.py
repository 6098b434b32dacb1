"""Simulated images show their prompt: the caption panel, checked against Pillow's own text.

Nothing is faked. PNGs come from the simulator's renderer (and over HTTP from a running
simulator) and are decoded with Pillow; the reference for "the prompt is readable" is the
same text drawn by Pillow's ``ImageDraw.text``, which the panel must match pixel for pixel.
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from ideogram_pipeline.simulator.caption import (
    FOOTER_COLOUR,
    PROMPT_LINES,
    TEXT_COLOUR,
    Caption,
    CaptionLayout,
    accent,
    displayable,
    glyph_face,
    render_caption,
    wrap,
)
from ideogram_pipeline.simulator.images import ImageKey, render_png
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator

LONG = (
    "Elden Ring themed painting of hybrid majestic aztec warrior fantasy biomechanical human, "
    "immortal angel symmetrical face angry mask closeup face breathing mask tattoo pattern "
    "golden ratio concept, deep forest psytrance Neo-Gothic concept, infinity glyph waves, "
    "intricate artwork masterpiece, very coherent artwork, cinematic, full frontal facial "
    "features by Artgerm, art by H.R. Giger, Johnatan Wayshak, Zdizslaw Beksinski"
)


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def _pillow_panel(caption: Caption, lines: list[str], width: int) -> np.ndarray:
    """The panel drawn the ordinary way, with ``ImageDraw.text``: the readable reference."""
    layout = CaptionLayout.for_width(width)
    panel = Image.new("RGB", (width, layout.rows(len(lines))), caption.background)
    draw = ImageDraw.Draw(panel)
    text_font = ImageFont.load_default(size=layout.text_size)
    footer_font = ImageFont.load_default(size=layout.footer_size)
    x = layout.margin
    draw.text(
        (x, layout.line_top(0)), caption.label, font=text_font, fill=accent(caption.background)
    )
    for number, line in enumerate(lines, start=1):
        draw.text((x, layout.line_top(number)), line, font=text_font, fill=TEXT_COLOUR)
    footer_top = layout.line_top(len(lines) + 1)
    draw.text((x, footer_top), caption.footer, font=footer_font, fill=FOOTER_COLOUR)
    return np.asarray(panel)


def _assert_same_text(panel: np.ndarray, reference: np.ndarray) -> None:
    """Pixel for pixel, but for where two glyphs' anti-aliased edges overlap (Pillow merges
    them in one bitmap, the panel pastes one after the other): a handful of pixels at
    small sizes, never a missing or moved letter."""
    assert panel.shape == reference.shape
    ink = int((reference != reference[0, 0]).any(axis=2).sum())
    differing = int((panel != reference).any(axis=2).sum())
    assert ink > 0 and differing <= ink // 200, f"{differing} of {ink} ink pixels differ"


def _find_rows(image: np.ndarray, panel: np.ndarray) -> int | None:
    """The first row at which ``panel`` appears in ``image`` (full width), if it does."""
    rows = panel.shape[0]
    for top in range(image.shape[0] - rows + 1):
        if np.array_equal(image[top : top + rows], panel):
            return top
    return None


@pytest.mark.parametrize("width", [256, 1024, 1312])
def test_the_panel_is_pillows_own_text(width: int) -> None:
    caption = Caption("SIMULATED", LONG, "V_3 · seed 7 · 1024x1024 · image 1", (40, 52, 70))
    panel = render_caption(caption, width, max_rows=10_000)
    assert panel is not None
    layout = CaptionLayout.for_width(width)
    face = glyph_face(layout.text_size)
    assert face is not None
    lines = wrap(LONG, face, width - 2 * layout.margin, PROMPT_LINES)
    _assert_same_text(panel, _pillow_panel(caption, lines, width))
    # The prompt itself is there from its first word, cut with "..." as it is too long.
    assert lines[0].startswith("Elden Ring themed") and lines[-1].endswith("...")
    assert len(lines) == PROMPT_LINES
    # A short image shows fewer lines, and none at all when even one would not fit.
    layout_rows = [layout.rows(n) for n in range(PROMPT_LINES + 1)]
    short = render_caption(caption, width, max_rows=layout_rows[2] + 1)
    assert short is not None and short.shape[0] == layout_rows[2]
    assert render_caption(caption, width, max_rows=layout_rows[1] - 1) is None


def test_wrapping_keeps_every_word_that_fits() -> None:
    face = glyph_face(24)
    assert face is not None
    short = "A lighthouse   on a cliff\nat dusk"
    lines = wrap(short, face, 200, 6)
    assert " ".join(lines) == "A lighthouse on a cliff at dusk" and len(lines) > 1
    assert all(face.width(line) <= 200 for line in lines)
    word = "x" * 30
    broken = wrap(f"see {word} here", face, 200, 6)
    assert "".join(broken).replace(" ", "") == f"see{word}here"
    assert all(face.width(line) <= 200 for line in broken)
    cut = wrap(LONG, face, 200, 2)
    assert len(cut) == 2 and cut[-1].endswith("...") and face.width(cut[-1]) <= 200
    assert wrap("", face, 200, 3) == []


def test_accents_are_shown_as_their_letters() -> None:
    assert displayable("Pokémon café, ﬁne Ünïcödé") == "Pokemon cafe, fine Unicode"
    assert displayable("東京") == "東京"  # no such glyphs in the font: boxes, not dropped


def test_each_image_carries_its_own_prompt_panel() -> None:
    keys = [
        ImageKey("V_3", "a red fox in the snow", 7, "1024x1024"),
        ImageKey("V_3", "a blue heron at dawn", 7, "1024x1024"),
        ImageKey("V_3", "a red fox in the snow", 7, "1024x1024", index=1),
    ]
    images = [_pixels(render_png(key, 512, 512)) for key in keys]
    for key, image in zip(keys, images, strict=True):
        caption = Caption(
            "SIMULATED",
            key.prompt,
            f"V_3 · seed 7 · 1024x1024 · image {key.index + 1}",
            tuple(int(v) for v in image[_panel_top(image, key), 0]),  # type: ignore[arg-type]
        )
        panel = render_caption(caption, 512, 512)
        assert panel is not None
        top = _find_rows(image, panel)
        assert top is not None, key
        # Roughly in the middle, with texture above and below.
        assert 0.2 < (top + panel.shape[0] / 2) / 512 < 0.8
    assert not np.array_equal(images[0], images[2])  # same prompt and seed, other image


def _panel_top(image: np.ndarray, key: ImageKey) -> int:
    """The first of the rows that are one flat colour across the left margin."""
    margin = CaptionLayout.for_width(image.shape[1]).margin
    for row in range(image.shape[0]):
        if (image[row, :margin] == image[row, 0]).all():
            return row
    raise AssertionError(f"no caption panel in the image for {key}")


def test_images_stay_realistic_and_cheap() -> None:
    keys = [ImageKey("V_3", f"{LONG} {n}", n, "1024x1024") for n in range(6)]
    render_png.__wrapped__(ImageKey("V_3", "warm up", 0, "1024x1024"), 1024, 1024)
    start = time.process_time()
    pngs = [render_png.__wrapped__(key, 1024, 1024) for key in keys]
    per_image_ms = (time.process_time() - start) / len(keys) * 1000
    assert all(700_000 <= len(png) <= 1_600_000 for png in pngs), [len(p) for p in pngs]
    assert per_image_ms < 50, f"{per_image_ms:.1f} ms per image"
    # Tiny images have no room for text and are still valid.
    assert _pixels(render_png(keys[0], 64, 64)).shape == (64, 64, 3)


def test_downloaded_images_show_the_prompt_as_sent() -> None:
    """Over HTTP, Magic Prompt off: the panel's first line starts with the row's prompt."""
    with running_simulator(SimulatorConfig(image_scale=0.5)) as sim:
        response = httpx.post(
            f"{sim.base_url}/v1/ideogram-v3/generate",
            headers={"Api-Key": sim.api_key},
            json={"prompt": "A paper crane on a desk", "seed": 3, "magic_prompt": "OFF"},
        )
        item = response.json()["data"][0]
        image = _pixels(httpx.get(item["url"]).content)
    width = image.shape[1]
    layout = CaptionLayout.for_width(width)
    top = _panel_top(image, ImageKey("V_3", item["prompt"], 3, item["resolution"]))
    caption = Caption(
        "SIMULATED",
        "A paper crane on a desk",
        f"V_3 · seed 3 · {item['resolution']} · image 1",
        tuple(int(v) for v in image[top, 0]),  # type: ignore[arg-type]
    )
    expected = _pillow_panel(caption, ["A paper crane on a desk"], width)
    _assert_same_text(image[top : top + layout.rows(1)], expected)

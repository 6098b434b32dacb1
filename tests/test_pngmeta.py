"""PNG text chunks and perceptual hashes, on real PNGs (the simulator's and Pillow's).

Nothing is faked: images come from the simulator's renderer and from Pillow, and every
embedded file is read back both by our reader and by Pillow, as a viewer would.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image

from ideogram_pipeline.images.fingerprints import (
    ImageTooLarge,
    hamming,
    open_image,
    perceptual_hash,
)
from ideogram_pipeline.images.png_metadata import (
    JSON_KEYWORD,
    PngError,
    embed_metadata,
    parameters_text,
    prepare_for_storage,
    read_metadata,
)
from ideogram_pipeline.simulator.images import ImageKey, pixel_size, render_png

RECORD = {
    "id": "0123456789abcdef0123456789abcdef",
    "row": 3,
    "image_index": 0,
    "prompt": 'Ein Fuchs im Schnee, 雪の中の狐 🦊, "quoted"',
    "expanded_prompt": "A red fox, Fuchs im Schnee, cinematic light",
    "negative_prompt": "blur, ぼかし",
    "model": "V_3",
    "seed": 12345,
    "resolution": "1024x1024",
    "aspect_ratio": "1x1",
    "style_type": "REALISTIC",
    "rendering_speed": "TURBO",
    "magic_prompt": "ON",
    "request_hash": "ab" * 32,
    "tags": ["never", "embedded"],
    "original_url": "https://example.invalid/signed?token=secret",
}


def _png() -> bytes:
    return render_png(ImageKey("V_3", "a fox", 7, "1024x1024"), *pixel_size("1024x1024", 0.25))


def test_round_trip_with_non_ascii_prompts() -> None:
    png = _png()
    stamped = embed_metadata(png, RECORD, batch="winter")
    meta = read_metadata(stamped)
    record = meta["record"]
    assert record["prompt"] == RECORD["prompt"]
    assert record["negative_prompt"] == "blur, ぼかし"
    assert record["expanded_prompt"] == RECORD["expanded_prompt"]
    assert (record["seed"], record["model"], record["size"]) == (12345, "V_3", "1024x1024")
    assert (record["style_type"], record["rendering_speed"]) == ("REALISTIC", "TURBO")
    assert (record["id"], record["batch"], record["row"]) == (RECORD["id"], "winter", 3)
    # Mutable or secret facts stay out of the file.
    assert "tags" not in record and "original_url" not in record
    assert "secret" not in stamped.decode("latin-1")

    lines = meta["parameters"].splitlines()
    assert lines[0] == RECORD["prompt"]
    assert lines[1] == "Negative prompt: blur, ぼかし"
    assert lines[2].startswith("Seed: 12345, Size: 1024x1024, Aspect ratio: 1x1, Model: V_3")
    assert "Batch: winter" in lines[2] and f"Record: {RECORD['id']}" in lines[2]

    # A viewer (Pillow) sees the same text and the same pixels.
    image = Image.open(io.BytesIO(stamped))
    image.load()
    assert image.info["parameters"] == meta["parameters"]
    assert image.tobytes() == Image.open(io.BytesIO(png)).tobytes()
    # The simulator's own Software chunk is kept.
    assert meta["text"]["Software"].startswith("ideogram-pipeline simulator")


def test_embedding_is_idempotent_and_latin1_uses_text() -> None:
    png = _png()
    plain = {"id": "x" * 32, "prompt": "A café in Paris", "seed": 1, "model": "V_2"}
    once = embed_metadata(png, plain, batch="b")
    assert embed_metadata(once, plain, batch="b") == once
    assert b"tEXtparameters\x00A caf\xe9 in Paris" in once  # Latin-1 tEXt, as other tools write
    assert once.endswith(b"IEND\xaeB`\x82")
    assert read_metadata(once)["parameters"].startswith("A café in Paris\nSeed: 1")


def test_parameters_quote_values_with_commas() -> None:
    text = parameters_text({"prompt": "p", "seed": 3, "style_type": "A, B"}, batch="x, y")
    assert text.splitlines()[1] == 'Seed: 3, Style: "A, B", Batch: "x, y", ' + (
        "Generator: Ideogram via ideogram-pipeline"
    )


def test_damaged_files_are_reported() -> None:
    stamped = embed_metadata(_png(), RECORD, batch="b")
    with pytest.raises(PngError, match="signature"):
        read_metadata(b"GIF89a" + stamped[6:])
    with pytest.raises(PngError):
        embed_metadata(stamped[:-20], RECORD)
    position = stamped.index(JSON_KEYWORD.encode()) + 30
    damaged = stamped[:position] + b"X" + stamped[position + 1 :]
    with pytest.raises(PngError, match="CRC"):
        read_metadata(damaged)


def test_compressed_text_bomb_is_capped() -> None:
    png = _png()
    bomb = b"bomb\x00\x00" + zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)
    chunk = struct.pack(">I", len(bomb)) + b"zTXt" + bomb
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + bomb))
    hostile = png[:-12] + chunk + png[-12:]
    with pytest.raises(PngError, match="inflates beyond"):
        read_metadata(hostile)


def test_prepare_for_storage_records_download_hash() -> None:
    png = _png()
    record = dict(RECORD)
    stored = prepare_for_storage(png, record, "batch-1")
    assert record["download_sha256"] == hashlib.sha256(png).hexdigest()
    assert hashlib.sha256(stored).hexdigest() != record["download_sha256"]
    # The engine hashes the downloaded picture; the stored file's chunks do not change it.
    assert len(perceptual_hash(png) or "") == 16
    assert perceptual_hash(png) == perceptual_hash(stored)
    # Bytes that are not a parseable PNG are stored as downloaded, never dropped.
    junk = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x05junk"
    assert prepare_for_storage(junk, {}, "b") == junk


def _huge_png(width: int, height: int) -> bytes:
    """A tiny file that declares an enormous image (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_refused() -> None:
    bomb = _huge_png(100_000, 100_000)
    with pytest.raises(ImageTooLarge):
        open_image(bomb)
    assert perceptual_hash(bomb) is None
    assert perceptual_hash(b"not an image") is None


def test_phash_distance_tracks_visual_similarity() -> None:
    base = Image.linear_gradient("L").resize((256, 256)).convert("RGB")
    shifted = Image.eval(base, lambda v: min(255, v + 6))  # slightly brighter
    other = base.rotate(90)

    def encode(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    a, b, c = (perceptual_hash(encode(i)) for i in (base, shifted, other))
    assert a and b and c
    assert hamming(a, b) <= 4 < hamming(a, c)

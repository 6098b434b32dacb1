"""Reference images (issue 18, points 1-2): style references, a character reference and its
mask, named by path, ``s3://`` URI or record id, checked before anything is sent, stored
once under ``<root>/references/``, recorded by SHA-256 and role, sent as multipart parts and
sent again byte for byte by ``reproduce``.

Real components: image files written by Pillow, the bundled simulator over loopback (it
checks every file part against the spec's limits and hashes the bytes into its billing
counter), local folders and SeaweedFS for ``s3://`` references.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import Batch, parse_batch
from ideogram_pipeline.batches.references import resolve_references
from ideogram_pipeline.history.reproduce import plan, reproduce
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.ideogram.references import MAX_TOTAL_BYTES, ReferenceImage
from ideogram_pipeline.ideogram.requests import v3_multipart
from ideogram_pipeline.runs.runner import execute_batch
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import open_store

HEADER = "prompt,model,style_reference_images,character_reference_images,character_reference_mask"


def _png(path: Path, size: tuple[int, int] = (64, 48), colour: int = 80, mode: str = "RGB") -> Path:
    Image.new(mode, size, colour if mode == "L" else (colour, 120, 200)).save(path)
    return path


def _noise_png(path: Path, side: int) -> Path:
    """A PNG that does not compress: about 3 bytes per pixel."""
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=0)
    return path


def _batch(folder: Path, *lines: str) -> Batch:
    source = folder / "refs.csv"
    text = "\n".join([HEADER, *lines]) + "\n"
    source.write_text(text, encoding="utf-8")
    return parse_batch(text.encode("utf-8"), source=str(source), key="refs")


def _local(tmp_path: Path) -> Settings:
    return load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("a,V_3,,x.png|y.png,", "character_reference_images", "Ideogram takes 1"),
        ("a,V_3,,x.png,m1.png|m2.png", "character_reference_mask", "2 mask(s) for 1"),
        ("a,V_3,,,m.png", "character_reference_mask", "0 character reference"),
        ("a,V_2,s.png,,", "style_reference_images", "V_2 does not take"),
    ],
)
def test_reference_cells_are_checked_when_the_batch_is_read(
    tmp_path: Path, line: str, field: str, needle: str
) -> None:
    (row,) = _batch(tmp_path, line).rows
    assert isinstance(row, RejectedRow), row
    assert (row.field, row.row) == (field, 1) and needle in row.reason, row.reason


def test_style_references_exclude_style_codes_and_transparency(tmp_path: Path) -> None:
    text = (
        "prompt,style_codes,transparent,style_reference_images\na,AAFF5733,,s.png\nb,,true,s.png\n"
    )
    codes, transparent = parse_batch(text.encode(), source=str(tmp_path / "x.csv")).rows
    assert isinstance(codes, RejectedRow) and codes.field == "style_reference_images"
    assert "style_codes and style_reference_images cannot be used together" in codes.reason
    assert isinstance(transparent, RejectedRow) and transparent.field == "style_reference_images"
    assert "cannot be used with transparent=true" in transparent.reason


def test_references_are_read_checked_and_stored_once(tmp_path: Path) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    style = _png(refs / "style.png")
    face = _png(tmp_path / "face.png", (64, 64), 30)
    mask = _png(tmp_path / "mask.png", (64, 64), 255, mode="L")
    wrong_mask = _png(tmp_path / "small-mask.png", (32, 32), 255, mode="L")
    (tmp_path / "notes.png").write_text("not an image", encoding="utf-8")
    settings = _local(tmp_path)
    store = open_store(settings)
    batch = _batch(
        tmp_path,
        "one,V_3,refs/style.png,,",
        f"two,V_3,{style}|refs/style.png,face.png,mask.png",  # absolute and relative
        "three,V_3,refs/missing.png,,",
        "four,V_3,notes.png,,",
        f"five,V_3,,face.png,{wrong_mask}",
    )
    resolved = resolve_references(batch, settings, store).rows
    one, two, three, four, five = resolved
    assert isinstance(one, GenerationRequest) and isinstance(two, GenerationRequest)
    style_sha = hashlib.sha256(style.read_bytes()).hexdigest()
    assert one.references == (ReferenceImage("style", style_sha, "png"),)
    assert [(r.role, r.sha256) for r in two.references or ()] == [
        ("style", style_sha),
        ("style", style_sha),
        ("character", hashlib.sha256(face.read_bytes()).hexdigest()),
        ("character_mask", hashlib.sha256(mask.read_bytes()).hexdigest()),
    ]
    assert one.reference_sources == () and "reference_sources" not in one.parameters()
    stored = sorted(info.key for info in store.list("references/"))
    assert stored == sorted({r.key for r in two.references or ()})  # each bytes stored once
    assert store.get_bytes(f"references/{style_sha}.png") == style.read_bytes()
    assert isinstance(three, RejectedRow) and three.field == "style_reference_images"
    assert "'refs/missing.png': no such file" in three.reason
    assert isinstance(four, RejectedRow) and "is not PNG, JPEG or WebP" in four.reason
    assert isinstance(five, RejectedRow) and five.field == "character_reference_mask"
    assert "mask 1 is 32x32 but its character image is 64x64" in five.reason
    # The hash covers the bytes: a copy of the file under another name is the same request.
    copy = _png(tmp_path / "copy.png")
    (same,) = resolve_references(_batch(tmp_path, "one,V_3,copy.png,,"), settings, store).rows
    assert copy.read_bytes() == style.read_bytes()
    assert isinstance(same, GenerationRequest) and same.request_hash() == one.request_hash()


@pytest.mark.slow
def test_style_references_over_ten_megabytes_are_refused(tmp_path: Path) -> None:
    big = [_noise_png(tmp_path / f"noise{n}.png", 1400) for n in (1, 2)]
    assert sum(p.stat().st_size for p in big) > MAX_TOTAL_BYTES
    settings = _local(tmp_path)
    batch = _batch(tmp_path, "a,V_3,noise1.png|noise2.png,,")
    (row,) = resolve_references(batch, settings, open_store(settings)).rows
    assert isinstance(row, RejectedRow) and row.field == "style_reference_images"
    assert "the limit is 10,485,760" in row.reason


def test_s3_references_must_be_inside_the_storage_root(
    s3_settings: Settings, tmp_path: Path
) -> None:
    store = open_store(s3_settings)
    image = _png(tmp_path / "brand.png").read_bytes()
    store.put_bytes("inputs/brand.png", image, content_type="image/png")
    inside = f"{store.root.rstrip('/')}/inputs/brand.png"
    bucket = s3_settings.storage.removeprefix("s3://").split("/")[0]
    outside = f"s3://{bucket}/elsewhere/brand.png"
    batch = _batch(tmp_path, f"a,V_3,{inside},,", f"b,V_3,{outside},,", "c,V_3,s3-missing,,")
    first, second, third = resolve_references(batch, s3_settings, store).rows
    assert isinstance(first, GenerationRequest) and first.references is not None
    assert store.get_bytes(first.references[0].key) == image
    assert isinstance(second, RejectedRow) and "is outside the storage root" in second.reason
    assert isinstance(third, RejectedRow) and "no such file" in third.reason


def test_multipart_parts_carry_the_stored_bytes(tmp_path: Path) -> None:
    settings = _local(tmp_path)
    store = open_store(settings)
    _png(tmp_path / "s.png")
    (row,) = resolve_references(_batch(tmp_path, "a,V_3,s.png,,"), settings, store).rows
    assert isinstance(row, GenerationRequest)
    parts = v3_multipart(row, store.get_bytes)
    files = [(name, value) for name, value in parts if value[0] is not None]
    assert [(n, v[0], v[2]) for n, v in files] == [
        ("style_reference_images", f"{row.references[0].sha256}.png", "image/png")  # type: ignore[index]
    ]
    assert files[0][1][1] == (tmp_path / "s.png").read_bytes()
    with pytest.raises(ValueError, match="nothing to read them"):
        v3_multipart(row)


@pytest.fixture(scope="module")
def simulator() -> Simulator:
    with running_simulator(SimulatorConfig(image_scale=0.25, latency_s=0)) as sim:
        yield sim


@pytest.mark.slow
@pytest.mark.parametrize("api_mode", ["sync", "async"])
def test_reference_rows_run_record_and_reproduce_byte_for_byte(
    simulator: Simulator, tmp_path: Path, api_mode: str
) -> None:
    env = {
        "IDEOGRAM_STORAGE": str(tmp_path / "root"),
        "IDEOGRAM_API_KEY": simulator.api_key,
        "IDEOGRAM_BASE_URL": simulator.base_url,
        "IDEOGRAM_API_MODE": api_mode,
    }
    settings = load_settings(env)
    store = open_store(settings)
    _png(tmp_path / "style.png")
    face = _png(tmp_path / "face.png", (64, 64), 30)
    _png(tmp_path / "mask.png", (64, 64), 255, mode="L")
    _png(tmp_path / "gone.png", (40, 40), 10)
    # Seeds are explicit so a reproduced body equals the original one (an unseeded row is
    # reproduced with the seed Ideogram chose, a different body).
    text = (
        "prompt,seed,style_reference_images,character_reference_images,character_reference_mask\n"
        "A brand poster,21,style.png,,\n"
        "Our mascot surfing,22,,face.png,mask.png\n"
        "A vanished reference,23,gone.png,,\n"
    )
    (tmp_path / "refs.csv").write_text(text, encoding="utf-8")
    batch = parse_batch(text.encode(), source=str(tmp_path / "refs.csv"), key="refs")
    (tmp_path / "gone.png").unlink()  # deleted between reading the batch and sending it
    billed_before = simulator.stats.billed_usd
    summary = execute_batch(batch, settings, store=store)
    assert (summary.stored, summary.rejected) == (2, 1)
    assert simulator.stats.invalid_requests == []
    # 0.06 for the style-reference row, 0.15 for the character row (its own product).
    assert round(simulator.stats.billed_usd - billed_before, 4) == 0.21
    con = history.connect(settings, store)
    try:
        rows = con.execute(
            "SELECT row, status, reference_roles, reference_sha256s, cost_usd, error, id "
            "FROM generations ORDER BY row"
        ).fetchall()
    finally:
        con.close()
    poster, mascot, vanished = rows
    assert poster[2] == ["style"] and mascot[2] == ["character", "character_mask"]
    assert mascot[3][0] == hashlib.sha256(face.read_bytes()).hexdigest()
    assert (poster[4], mascot[4]) == (0.06, 0.15)
    assert vanished[1] == "rejected" and "'gone.png': no such file" in vanished[5]

    face.unlink()  # the user's file is gone: the stored copy is what reproduce sends
    bodies_before = dict(simulator.stats.billed_by_body_hash)
    con = history.connect(settings, store)
    try:
        planned = plan(con, ids=[poster[6], mascot[6]])
    finally:
        con.close()
    assert all(item.exact for item in planned)
    result = reproduce(settings, store, planned, label="refs")
    assert all(item.identical for item in result.items)
    after = simulator.stats.billed_by_body_hash
    again = {h for h, n in after.items() if n > bodies_before.get(h, 0)}
    # The simulator hashes each file part's bytes into the body: the same bodies came back.
    assert len(again) == 2 and again <= set(bodies_before)


def test_reproduce_refuses_when_a_reference_is_no_longer_stored(tmp_path: Path) -> None:
    from ideogram_pipeline.history.reproduce import ReproduceError, _with_reference_keys

    store = open_store(_local(tmp_path))
    request = GenerationRequest(
        row=1, prompt="x", references=(ReferenceImage("style", "ab" * 32, ""),)
    )
    with pytest.raises(ReproduceError, match="is no longer stored"):
        _with_reference_keys(request, store)
    store.put_bytes(f"references/{'ab' * 32}.webp", b"RIFF....WEBP")
    located = _with_reference_keys(request, store)
    assert located.references is not None and located.references[0].extension == "webp"
    assert located.request_hash() == request.request_hash()


def test_a_model_override_rechecks_reference_and_control_columns(tmp_path: Path) -> None:
    from ideogram_pipeline.batches.overrides import RunOverrides, apply_overrides

    text = "prompt,style_reference_images,color_palette\na,s.png,\nb,,EMBER\nc,,\n"
    batch = parse_batch(text.encode(), source=str(tmp_path / "o.csv"), key="o")
    refs, palette, plain = apply_overrides(batch, RunOverrides(model="V_2")).rows
    assert isinstance(refs, RejectedRow) and refs.field == "style_reference_images"
    assert "V_2 does not take" in refs.reason and "(model overridden to V_2)" in refs.reason
    assert isinstance(palette, RejectedRow) and palette.field == "color_palette"
    assert isinstance(plain, GenerationRequest) and plain.model == "V_2"
    kept = apply_overrides(batch, RunOverrides(rendering_speed="TURBO")).rows[0]
    assert isinstance(kept, GenerationRequest) and kept.reference_sources == (("style", "s.png"),)


@pytest.mark.slow
def test_a_stored_image_as_reference_then_search_and_inspect(
    simulator: Simulator, tmp_path: Path
) -> None:
    """An image the pipeline made, named by its record id, becomes the next batch's
    character; ``search --reference`` finds what was made from it, by id or by hash, and the
    PNG's metadata chunk names it."""
    import json

    from click.testing import CliRunner

    from ideogram_pipeline.cli import main
    from ideogram_pipeline.images.png_metadata import read_metadata

    env = {
        "IDEOGRAM_STORAGE": str(tmp_path / "root"),
        "IDEOGRAM_API_KEY": simulator.api_key,
        "IDEOGRAM_BASE_URL": simulator.base_url,
    }
    settings = load_settings(env)
    store = open_store(settings)
    first = parse_batch(b"prompt,seed\nOur mascot Pip,5\n", source=str(tmp_path / "a.csv"))
    execute_batch(first, settings, store=store)
    con = history.connect(settings, store)
    try:
        [(pip_id, pip_sha)] = con.execute("SELECT id, sha256 FROM generations").fetchall()
    finally:
        con.close()
    text = f"prompt,seed,character_reference_images\nPip surfing,6,{pip_id[:10]}\nA plain sea,7,\n"
    second = parse_batch(text.encode(), source=str(tmp_path / "b.csv"), key="b")
    summary = execute_batch(second, settings, store=store)
    assert summary.stored == 2
    runner = CliRunner(env=env)
    for value in (pip_id[:10], pip_sha, pip_sha[:12]):
        found = runner.invoke(main, ["search", "--reference", value, "--format", "json"])
        assert found.exit_code == 0, found.output
        rows = json.loads(found.output)
        assert [row["prompt"] for row in rows] == ["Pip surfing"], (value, rows)
    bad = runner.invoke(main, ["search", "--reference", "not-hex"])
    assert bad.exit_code != 0 and "neither a SHA-256" in bad.output
    con = history.connect(settings, store)
    try:
        [(key,)] = con.execute(
            "SELECT image_key FROM generations WHERE prompt = 'Pip surfing'"
        ).fetchall()
    finally:
        con.close()
    embedded = read_metadata(store.get_bytes(key))
    assert embedded["record"]["reference_sha256s"] == [pip_sha]
    assert embedded["record"]["reference_roles"] == ["character"]
    assert f"References: character {pip_sha[:12]}" in embedded["parameters"]

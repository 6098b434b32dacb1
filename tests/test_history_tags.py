"""Tags after the fact and near-duplicate grouping, on a local and an S3 root.

Real components: a batch through the engine against the bundled simulator, tags changed
in the Delta tables under a folder or a SeaweedFS bucket, read back through DuckDB; near
duplicates are planted as real images made with Pillow whose perceptual hashes go into
the real history tables.
"""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from ideogram_pipeline import history
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.duplicates import near_duplicate_groups
from ideogram_pipeline.history.schema import GenerationRecord
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.images.fingerprints import perceptual_hash
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.history_support import Root, make_root


@pytest.fixture(scope="module")
def simulator() -> Simulator:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        yield sim


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, simulator: Simulator, tmp_path: Path) -> Root:
    return make_root(request.param, simulator, request, tmp_path / "root")


def _tags(root: Root, record_id: str) -> list[str]:
    [(tags,)] = root.query("SELECT tags FROM generations WHERE id = ?", [record_id])
    return list(tags)


@pytest.mark.slow
def test_tags_after_the_fact(root: Root) -> None:
    root.run("tagged", "prompt,seed,tags\nA paper crane,1,base|x\nA clay pot,2,\n")
    crane = root.records("row = 1")[0]["id"]
    pot = root.records("row = 2")[0]["id"]
    runner = CliRunner(env=root.env)

    result = runner.invoke(main, ["tag", crane[:8], pot, "--add", "keep", "--add", "later"])
    assert result.exit_code == 0, result.output
    assert "2 record(s): +keep +later" in result.output
    assert _tags(root, crane) == ["base", "x", "keep", "later"]
    assert _tags(root, pot) == ["keep", "later"]

    assert runner.invoke(main, ["tag", crane, "--remove", "x", "--remove", "later"]).exit_code == 0
    assert _tags(root, crane) == ["base", "keep"]
    assert runner.invoke(main, ["tag", crane, "--add", "x"]).exit_code == 0
    assert _tags(root, crane) == ["base", "keep", "x"]  # a tag added again goes last

    # Search sees the same tags, and the audit trail has the row after each change.
    found = runner.invoke(main, ["search", "--tag", "keep", "--format", "json"])
    assert {row["id"] for row in json.loads(found.output)} == {crane, pot}
    audit = root.query(
        "SELECT event, tags FROM generation_records WHERE id = ? ORDER BY recorded_at", [crane]
    )
    assert audit == [
        ("generate", ["base", "x"]),
        ("tag", ["base", "x", "keep", "later"]),
        ("tag", ["base", "keep"]),
        ("tag", ["base", "keep", "x"]),
    ]
    changes = root.query("SELECT count(*) FROM generation_records WHERE event = 'tag'")

    if root.kind == "s3":
        return  # input validation is the same on every root: checked once, locally
    for args, needle in [
        (["tag", "0" * 32, "--add", "a"], "no record"),
        (["tag", crane[:3], "--add", "a"], "too short"),
        (["tag", crane], "nothing to change"),
        (["tag", crane, "--add", "a", "--remove", "a"], "both added and removed"),
        (["tag", crane, "--add", "a|b"], "may not contain"),
    ]:
        bad = runner.invoke(main, args)
        assert bad.exit_code != 0 and needle in bad.output, (args, bad.output)
    # Refused changes wrote nothing.
    assert root.query("SELECT count(*) FROM generation_records WHERE event = 'tag'") == changes


def _picture(seed: int) -> Image.Image:
    """A distinct picture: random shapes on a gradient."""
    rng = random.Random(seed)
    image = Image.linear_gradient("L").resize((256, 256)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(200), rng.randrange(200)
        size = rng.randrange(20, 90)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse([x, y, x + size, y + size], fill=colour)
    return image


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _jpeg_round_trip(image: Image.Image) -> Image.Image:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=60)
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def test_near_duplicate_groups_on_planted_images(root: Root) -> None:
    a, b, c = _picture(1), _picture(2), _picture(3)
    planted = {
        "a": a,
        "a-jpeg": _jpeg_round_trip(a),
        "a-cropped": a.crop((6, 6, 256, 256)).resize((256, 256)),
        "b": b,
        "b-cropped": b.crop((0, 0, 248, 248)).resize((256, 256)),
        "c": c,
    }
    start = datetime(2024, 5, 1, tzinfo=UTC)
    records = []
    for number, (name, image) in enumerate(planted.items(), start=1):
        data = _png(image)
        key = f"images/2024/05/01/{name}.png"
        root.store.put_bytes(key, data, content_type="image/png")
        records.append(
            {
                "id": f"{name:0<32}"[:32],
                "row": number,
                "image_index": 0,
                "prompt": name,
                "status": "stored",
                "image_key": key,
                "stored_uri": root.store.uri(key),
                "phash": perceptual_hash(data),
                "created_at": start + timedelta(minutes=number),
                "run_started_at": start,
                "attempt_id": "a1",
                "date": "2024-05-01",
            }
        )
    # An exact-duplicate link shares a's image: it counts under a, not as another member.
    link = {**records[0], "id": "link" + "0" * 28, "row": 99, "duplicate_of": records[0]["id"]}
    rows = [{**r, "batch": "planted"} for r in [*records, link]]
    HistoryTables(root.settings).write("planted", map(GenerationRecord.from_row, rows))

    con = history.connect(root.settings, root.store)
    try:
        groups = near_duplicate_groups(con, 6)
        strict = near_duplicate_groups(con, 0)
    finally:
        con.close()
    assert [[m["prompt"] for m in group] for group in groups] == [
        ["a", "a-jpeg", "a-cropped"],
        ["b", "b-cropped"],
    ]
    assert groups[0][0]["records"] == 2 and groups[0][0]["distance"] == 0
    assert [[m["distance"] for m in group] for group in groups] == [[0, 0, 6], [0, 6]]
    # At distance 0 only the re-encoded copy is "the same picture".
    assert [[m["prompt"] for m in group] for group in strict] == [["a", "a-jpeg"]]

    result = CliRunner(env=root.env).invoke(main, ["duplicates", "--distance", "6"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2 group(s) of near-identical images")
    bad = CliRunner(env=root.env).invoke(main, ["duplicates", "--distance", "65"])
    assert bad.exit_code != 0


@pytest.mark.parametrize("distance", [0, 3, 10])
def test_candidate_pairs_match_brute_force(distance: int) -> None:
    """The pigeonhole search finds exactly the pairs a full comparison finds."""
    import numpy as np

    from ideogram_pipeline.history.duplicates import _close_pairs

    rng = random.Random(distance)
    values = [rng.getrandbits(64) for _ in range(300)]
    for base in values[:40]:  # plant neighbours at every distance up to 12 bits
        flipped = base
        for bit in rng.sample(range(64), rng.randrange(1, 13)):
            flipped ^= 1 << bit
        values.append(flipped)
    unique = np.unique(np.array(values, dtype=np.uint64))
    found = {tuple(sorted(pair)) for pair in _close_pairs(unique, distance)}
    ints = [int(v) for v in unique]
    expected = {
        (i, j)
        for i in range(len(ints))
        for j in range(i + 1, len(ints))
        if (ints[i] ^ ints[j]).bit_count() <= distance
    }
    assert found == expected and (distance == 0 or expected)

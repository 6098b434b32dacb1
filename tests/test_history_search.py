"""Search, export and contact sheets over a known history, on a local and an S3 root.

Real components: two batches run through the engine against the bundled simulator (on
loopback), stored in a temporary folder or a SeaweedFS bucket, queried with DuckDB (over
httpfs for S3), exported through the CLI.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from ideogram_pipeline.cli import main
from ideogram_pipeline.history.search import SearchError, SearchFilters, search
from ideogram_pipeline.images.contact_sheets import save_contact_sheet
from ideogram_pipeline.images.png_metadata import read_metadata
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.history_support import Root, make_root

SPRING = (
    "prompt,seed,model,aspect_ratio,style_type,tags\n"
    'A red fox in fresh snow,11,,,,"nature|fox-photo"\n'
    "Two paper boats on a puddle,12,V_2_TURBO,16:9,,boats\n"
    "Un CAFÉ crème à Paris,13,,,REALISTIC,food|fr\n"
    "A lighthouse in a storm [sim:unsafe],14,,,,\n"
    "=1+2 looks like a formula,15,,,,\n"
)
AUTUMN = "prompt,seed,tags\nA red barn in autumn fog,21,farm\nFoxes crossing a road at dusk,22,\n"


@pytest.fixture(scope="module")
def simulator() -> Simulator:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        yield sim


@pytest.fixture(scope="module", params=["local", "s3"])
def known(request: pytest.FixtureRequest, simulator: Simulator, tmp_path_factory) -> Root:
    root = make_root(request.param, simulator, request, tmp_path_factory.mktemp("root"))
    assert root.run("spring", SPRING).stored == 4
    assert root.run("autumn", AUTUMN).stored == 2
    return root


class _Searcher:
    """One DuckDB connection for many searches (a connection per search is slow on S3)."""

    def __init__(self, root: Root) -> None:
        from ideogram_pipeline import history

        self.con = history.connect(root.settings, root.store)

    def __call__(self, **filters) -> list[str]:
        return [row["prompt"] for row in search(self.con, SearchFilters(**filters))]


@pytest.mark.slow
def test_search_filters(known: Root) -> None:
    prompts = _Searcher(known)
    fox = "A red fox in fresh snow"
    assert prompts(text="fox") == [fox]  # whole words: "Foxes" is not "fox"
    assert prompts(text="FOX*") == ["Foxes crossing a road at dusk", fox]  # newest first
    assert prompts(text='"fresh snow" red') == [fox]
    assert prompts(text='"snow fresh"') == []
    assert prompts(text="café") == ["Un CAFÉ crème à Paris"]  # Unicode case folding
    assert prompts(text="x' OR 1=1 --") == []  # bound, never pasted into SQL
    assert prompts(seed=12) == ["Two paper boats on a puddle"]
    assert prompts(model="v_2_turbo") == ["Two paper boats on a puddle"]
    assert prompts(aspect_ratio="16:9") == ["Two paper boats on a puddle"]
    assert prompts(style="realistic") == ["Un CAFÉ crème à Paris"]
    assert prompts(tags=("fr",)) == ["Un CAFÉ crème à Paris"]
    assert prompts(tags=("nature", "fox-photo")) == [fox]
    assert prompts(statuses=("unsafe",)) == ["A lighthouse in a storm [sim:unsafe]"]
    assert len(prompts(batch="autumn")) == 2
    today = datetime.now(UTC).date()
    assert len(prompts(since=today, until=today)) == 7
    assert prompts(since=today + timedelta(days=1)) == []
    assert prompts(until=today - timedelta(days=1)) == []
    assert len(prompts(limit=3)) == 3
    with pytest.raises(SearchError, match="unbalanced"):
        prompts(text='"open phrase')
    with pytest.raises(SearchError, match="model"):
        prompts(model="V_9")
    prompts.con.close()


def test_search_cli_formats_and_locations(known: Root) -> None:
    runner = CliRunner(env=known.env)
    result = runner.invoke(main, ["search", "boats", "--format", "json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["seed"] == 12 and row["batch"] == "spring" and row["tags"] == ["boats"]
    assert row["stored_uri"].startswith("s3://" if known.kind == "s3" else "/")
    table = runner.invoke(main, ["search", "--batch", "spring", "--status", "stored"])
    assert table.exit_code == 0 and "stored_uri" in table.output.splitlines()[0]
    assert len(table.output.splitlines()) == 1 + 4
    as_csv = runner.invoke(main, ["search", "formula", "--format", "csv"])
    assert "'=1+2 looks like a formula" in as_csv.output  # spreadsheet-safe
    bad = runner.invoke(main, ["search", "--since", "last tuesday"])
    assert bad.exit_code != 0 and "--since" in bad.output


def test_stored_images_describe_themselves(known: Root) -> None:
    [(record_id, key, sha, download_sha, phash)] = known.query(
        "SELECT id, image_key, sha256, download_sha256, phash FROM generations WHERE seed = 13"
    )
    data = known.store.get_bytes(key)
    assert hashlib.sha256(data).hexdigest() == sha != download_sha  # checksum of stored bytes
    meta = read_metadata(data)
    assert meta["record"]["id"] == record_id and meta["record"]["batch"] == "spring"
    assert meta["record"]["prompt"] == "Un CAFÉ crème à Paris"
    assert meta["parameters"].startswith("Un CAFÉ crème à Paris\nSeed: 13,")
    assert phash and len(phash) == 16
    # inspect reads a local path or an s3:// URI, whichever the root gives.
    runner = CliRunner(env=known.env)
    result = runner.invoke(main, ["inspect", known.store.uri(key)])
    assert result.exit_code == 0, result.output
    assert "Un CAFÉ crème à Paris" in result.output and record_id in result.output
    as_json = runner.invoke(main, ["inspect", known.store.uri(key), "--format", "json"])
    assert json.loads(as_json.output)["record"]["seed"] == 13


def test_inspect_refuses_files_without_parameters(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    (tmp_path / "text.txt").write_text("hello", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(plain)])
    assert result.exit_code != 0 and "carries no generation parameters" in result.output
    result = runner.invoke(main, ["inspect", str(tmp_path / "text.txt")])
    assert result.exit_code != 0 and "not a PNG" in result.output
    result = runner.invoke(main, ["inspect", str(tmp_path / "missing.png")])
    assert result.exit_code != 0 and "not a file" in result.output


@pytest.mark.slow
def test_export_matches_the_query(known: Root, tmp_path: Path) -> None:
    where = "batch = 'spring' AND seed <> 14"
    expected = dict(known.query(f"SELECT id, sha256 FROM generations WHERE {where}"))
    runner = CliRunner(env=known.env)
    for target in (tmp_path / "out", tmp_path / "out.zip"):
        result = runner.invoke(main, ["export", "--where", where, "--to", str(target)])
        assert result.exit_code == 0, result.output
        assert "4 record(s) and 4 image(s)" in result.output
        if target.suffix == ".zip":
            with zipfile.ZipFile(target) as archive:
                files = {name: archive.read(name) for name in archive.namelist()}
        else:
            files = {
                p.relative_to(target).as_posix(): p.read_bytes()
                for p in target.rglob("*")
                if p.is_file()
            }
        table = pq.read_table(io.BytesIO(files["metadata.parquet"]))
        assert sorted(table.column("id").to_pylist()) == sorted(expected)
        for record_id, path in zip(
            table.column("id").to_pylist(), table.column("export_path").to_pylist(), strict=True
        ):
            assert hashlib.sha256(files[path]).hexdigest() == expected[record_id]
        assert len([name for name in files if name.startswith("images/")]) == 4
        rows = list(csv.DictReader(io.StringIO(files["metadata.csv"].decode("utf-8"))))
        assert {row["id"] for row in rows} == set(expected)
        assert "'=1+2 looks like a formula" in {row["prompt"] for row in rows}
        assert json.loads(files["export.json"])["where"] == where
    again = runner.invoke(main, ["export", "--where", where, "--to", str(tmp_path / "out.zip")])
    assert again.exit_code != 0 and "already exists" in again.output
    bad = runner.invoke(main, ["export", "--where", "nope = 1", "--to", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "condition failed" in bad.output
    none = runner.invoke(main, ["export", "--where", "false", "--to", str(tmp_path / "y")])
    assert none.exit_code != 0 and "no records" in none.output


def test_contact_sheet_of_a_batch(known: Root) -> None:
    sheet = save_contact_sheet(known.settings, known.store, "spring", "run123")
    assert sheet is not None and (sheet.shown, sheet.total) == (5, 5)
    assert sheet.key == "reports/contact_sheets/spring/run123.png"
    assert known.store.get_bytes(sheet.key) == sheet.png
    image = Image.open(io.BytesIO(sheet.png))
    assert image.width >= 5 * 160 and image.height >= 160
    assert Image.open(io.BytesIO(sheet.preview_jpeg)).format == "JPEG"
    assert save_contact_sheet(known.settings, known.store, "no-such-batch", "r") is None


def test_contact_sheet_tiles_are_made_as_a_run_stores_its_images(
    simulator: Simulator, tmp_path: Path
) -> None:
    """The run makes the tiles of the file's first rows as it stores their images, and the
    sheet drawn afterwards uses them instead of reading those images back."""
    from ideogram_pipeline.batches.files import parse_batch
    from ideogram_pipeline.images.contact_sheets import MAX_TILES, TILE, TITLE, SheetTiles

    root = make_root("local", simulator, None, tmp_path)
    batch = parse_batch(SPRING.encode("utf-8"), source="tiles.csv", key="tiles")
    tiles = SheetTiles(row.row for row in batch.rows)
    assert root.run("tiles", SPRING, tiles=tiles).stored == 4
    stored = root.records("batch = 'tiles' AND status = 'stored' ORDER BY \"row\"")
    assert len(stored) == 4 and all(tiles.get(r["image_key"]) is not None for r in stored)
    first_row = min(row.row for row in batch.rows)
    assert tiles.wanted(first_row, 0) and not tiles.wanted(first_row, MAX_TILES)
    assert not tiles.wanted(first_row + MAX_TILES, 0)

    # Images gone from the store: the sheet still shows them from the tiles.
    root.store.delete([r["image_key"] for r in stored])
    centre = (TILE // 2, TITLE + TILE // 2)  # the first row's tile (a stored image)
    with_tiles = save_contact_sheet(root.settings, root.store, "tiles", "r1", tiles)
    without = save_contact_sheet(root.settings, root.store, "tiles", "r2")
    assert with_tiles is not None and without is not None
    tile = tiles.get(stored[0]["image_key"])
    assert tile is not None
    drawn = Image.open(io.BytesIO(with_tiles.png)).convert("RGB").getpixel(centre)
    assert drawn == tile.getpixel((tile.width // 2, tile.height // 2))
    placeholder = Image.open(io.BytesIO(without.png)).convert("RGB").getpixel(centre)
    assert placeholder == (60, 60, 66) != drawn

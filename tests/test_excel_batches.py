"""Excel batches (issue 18, point 4): ``.xlsx`` and ``.xls`` read exactly like CSV.

Every file here is a real workbook (openpyxl and xlwt write them; the reader is
python-calamine), read through the same path ``run``, the sensor and the launchpad use.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import dagster as dg
import pytest

from ideogram_pipeline.batches.files import BatchFileError, load_batch, parse_batch
from ideogram_pipeline.definitions import defs
from ideogram_pipeline.defs.batches.partitions import batch_files, csv_for_partition
from ideogram_pipeline.defs.batches.sensors import prompts_sensor
from ideogram_pipeline.defs.resources import build_resources
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from tests.support.spreadsheets import write_xls, write_xlsx

NATIVE_ROWS: list[list[str | int | float | bool | None]] = [
    ["prompt", "model", "aspect_ratio", "seed", "num_images", "magic_prompt", "tags"],
    ["A red fox in snow", "V_3", "16:9", 42, 2, False, "winter|fox"],
    ["A tram at night", "V_2A_TURBO", "1x1", 7, None, "on", None],
]
NATIVE_CSV = (
    "prompt,model,aspect_ratio,seed,num_images,magic_prompt,tags\n"
    "A red fox in snow,V_3,16:9,42,2,false,winter|fox\n"
    "A tram at night,V_2A_TURBO,1x1,7,,on,\n"
)
#: Ideogram's batch template, headers as its UI spreadsheet writes them.
TEMPLATE_ROWS: list[list[str | int | float | bool | None]] = [
    [
        "Prompt",
        "Visibility",
        "Aspect Ratio",
        "Magic Prompt",
        "Model",
        "Num Images",
        "Seed Number",
        "Rendering",
        "Negative Prompt",
    ],
    ["A lighthouse at dawn", "private", "16:9", "off", "3.0", 1, 12345, "turbo", "fog"],
    ["A paper crane", "public", "1:1", "on", "2a", 2, None, "default", None],
]


def test_xlsx_reads_exactly_like_the_same_csv(tmp_path: Path) -> None:
    xlsx = load_batch(write_xlsx(tmp_path / "spring.xlsx", NATIVE_ROWS))
    (tmp_path / "spring.csv").write_text(NATIVE_CSV, encoding="utf-8")
    csv = load_batch(tmp_path / "spring.csv")
    assert xlsx.key == csv.key == "spring"
    assert xlsx.format == "native"
    assert xlsx.rows == csv.rows
    first = xlsx.rows[0]
    assert isinstance(first, GenerationRequest)
    # Spreadsheets store numbers as floats: 42 must not reach the seed column as "42.0".
    assert (first.seed, first.num_images, first.magic_prompt) == (42, 2, "OFF")
    assert first.tags == ("winter", "fox")


def test_xls_reads_exactly_like_the_same_csv(tmp_path: Path) -> None:
    xls = load_batch(write_xls(tmp_path / "spring.xls", NATIVE_ROWS))
    (tmp_path / "spring.csv").write_text(NATIVE_CSV, encoding="utf-8")
    assert xls.rows == load_batch(tmp_path / "spring.csv").rows
    assert xls.content_sha256 != load_batch(tmp_path / "spring.csv").content_sha256


@pytest.mark.parametrize("writer", [write_xlsx, write_xls], ids=["xlsx", "xls"])
def test_ideogram_template_columns_work_unchanged(tmp_path: Path, writer) -> None:
    suffix = ".xlsx" if writer is write_xlsx else ".xls"
    batch = load_batch(writer(tmp_path / f"template{suffix}", TEMPLATE_ROWS))
    assert batch.format == "ideogram-ui"
    lighthouse, crane = batch.rows
    assert isinstance(lighthouse, GenerationRequest) and isinstance(crane, GenerationRequest)
    assert (lighthouse.model, lighthouse.rendering_speed) == ("V_3", "TURBO")
    assert lighthouse.seed == 12345
    assert (lighthouse.aspect_ratio, lighthouse.negative_prompt) == ("16x9", "fog")
    assert (crane.model, crane.num_images, crane.magic_prompt) == ("V_2A", 2, "ON")


def test_formulas_are_read_as_their_cached_values_never_evaluated(tmp_path: Path) -> None:
    rows = [
        ["prompt", "seed", "num_images"],
        ['=CONCAT("A poster of ","a whale")', "=40+2", "=1+1"],
        ["A plain row", "=2*3", None],
    ]
    # The cached values differ from what evaluating would give: the reader must not compute.
    cached = {"A2": "A cached poster", "B2": 7, "C2": 3, "B3": 9}
    batch = load_batch(write_xlsx(tmp_path / "formulas.xlsx", rows, cached=cached))
    poster, plain = batch.rows
    assert isinstance(poster, GenerationRequest) and isinstance(plain, GenerationRequest)
    assert (poster.prompt, poster.seed, poster.num_images) == ("A cached poster", 7, 3)
    assert plain.seed == 9


def test_a_formula_never_calculated_is_an_empty_cell(tmp_path: Path) -> None:
    rows = [["prompt", "seed"], ["A fox", "=40+2"], ['="A "&"cat"', "1"]]
    fox, cat = load_batch(write_xlsx(tmp_path / "uncached.xlsx", rows)).rows
    assert isinstance(fox, GenerationRequest) and fox.seed is None
    assert isinstance(cat, RejectedRow) and (cat.row, cat.field) == (2, "prompt")


def test_only_the_first_sheet_is_read_and_blank_rows_keep_numbers(tmp_path: Path) -> None:
    rows = [["prompt", "seed"], ["A fox", 1], [None, None], ["A cat", -5]]
    other = {"Notes": [["prompt"], ["never read"]]}
    batch = load_batch(write_xlsx(tmp_path / "sheets.xlsx", rows, extra_sheets=other))
    assert [row.row for row in batch.rows] == [1, 3]
    rejected = batch.rows[1]
    assert isinstance(rejected, RejectedRow)
    assert rejected.error == "row 3: field 'seed': '-5' is outside 0..2147483647"
    assert all(row.prompt != "never read" for row in batch.rows)


def test_a_header_below_blank_rows_and_unnamed_columns(tmp_path: Path) -> None:
    rows = [[None, None, None], ["Prompt", "Seed", None], ["A fox", 3, "a note"]]
    batch = load_batch(write_xlsx(tmp_path / "offset.xlsx", rows))
    (fox,) = batch.rows
    assert isinstance(fox, GenerationRequest) and (fox.row, fox.seed) == (1, 3)


def test_a_renamed_csv_is_not_a_spreadsheet(tmp_path: Path) -> None:
    fake = tmp_path / "batch.xlsx"
    fake.write_text(NATIVE_CSV, encoding="utf-8")
    with pytest.raises(BatchFileError) as error:
        load_batch(fake)
    message = str(error.value)
    assert message.startswith(f"{fake}: not a spreadsheet")
    assert "text (a CSV file?)" in message and "name it .csv" in message
    assert "\n" not in message


def test_other_zip_files_and_damaged_workbooks_fail_with_one_message(tmp_path: Path) -> None:
    docx = io.BytesIO()
    with zipfile.ZipFile(docx, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
    with pytest.raises(BatchFileError, match="a ZIP archive of something else"):
        parse_batch(docx.getvalue(), source="letter.xlsx")
    whole = write_xlsx(tmp_path / "whole.xlsx", NATIVE_ROWS).read_bytes()
    with pytest.raises(BatchFileError, match=r"not a readable spreadsheet \(XLSX container"):
        parse_batch(whole[: len(whole) // 2], source="truncated.xlsx")
    with pytest.raises(BatchFileError, match="neither XLSX nor XLS"):
        parse_batch(bytes(range(256)) * 4, source="noise.xls")
    with pytest.raises(BatchFileError, match="the first sheet is empty"):
        load_batch(write_xlsx(tmp_path / "empty.xlsx", []))
    with pytest.raises(BatchFileError, match="no 'prompt' column"):
        load_batch(write_xlsx(tmp_path / "noprompt.xlsx", [["text"], ["a fox"]]))


@pytest.mark.parametrize("kind", ["xlsx", "xls"])
def test_a_workbook_saved_as_csv_is_named_for_what_it_is(tmp_path: Path, kind: str) -> None:
    writer = write_xlsx if kind == "xlsx" else write_xls
    workbook = writer(tmp_path / f"real.{kind}", NATIVE_ROWS).read_bytes()
    misnamed = tmp_path / "batch.csv"
    misnamed.write_bytes(workbook)
    with pytest.raises(BatchFileError) as error:
        load_batch(misnamed)
    message = str(error.value)
    assert f"looks like an {kind.upper()} workbook saved as .csv" in message
    assert f"name the file .{kind}" in message and "UTF-8" not in message.split(";")[0]


def test_batch_files_pick_one_file_per_key(tmp_path: Path) -> None:
    (tmp_path / "spring.csv").write_text("prompt\nA tulip\n", encoding="utf-8")
    write_xlsx(tmp_path / "spring.xlsx", [["prompt"], ["A crocus"]])
    write_xlsx(tmp_path / "Summer Sale.XLSX", [["prompt"], ["A beach"]])
    write_xls(tmp_path / "autumn.xls", [["prompt"], ["A leaf"]])
    write_xlsx(tmp_path / "~$autumn.xlsx", [["prompt"], ["Excel's lock file"]])
    (tmp_path / "notes.txt").write_text("not a batch", encoding="utf-8")
    found = batch_files(tmp_path)
    assert {key: path.name for key, path in found.items() if "ummer" not in key} == {
        "autumn": "autumn.xls",
        "spring": "spring.csv",
    }
    summer = next(key for key in found if "ummer" in key)
    assert csv_for_partition(tmp_path, summer) == tmp_path / "Summer Sale.XLSX"
    assert csv_for_partition(tmp_path, "spring") == tmp_path / "spring.csv"
    assert csv_for_partition(tmp_path, "winter") is None


@pytest.fixture
def instance(tmp_path: Path):
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        yield instance


def _evaluate(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=build_resources()
    ) as context:
        return prompts_sensor(context)


def test_the_sensor_watches_xlsx_and_xls(
    instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    write_xlsx(prompts / "brand.xlsx", [["prompt"], ["A logo"]])
    write_xls(prompts / "legacy.xls", [["prompt"], ["A fax machine"]])
    monkeypatch.setenv("IDEOGRAM_PROMPTS_DIR", str(prompts))
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))
    first = _evaluate(instance, None)
    paths = {
        r.partition_key: r.run_config["ops"]["batch_images"]["config"]["csv_path"]
        for r in first.run_requests
    }
    assert paths == {"brand": str(prompts / "brand.xlsx"), "legacy": str(prompts / "legacy.xls")}
    instance.add_dynamic_partitions("batches", list(paths))
    assert _evaluate(instance, first.cursor).run_requests == []
    write_xlsx(prompts / "brand.xlsx", [["prompt"], ["A logo"], ["A banner"]])
    edited = _evaluate(instance, first.cursor)
    assert [r.partition_key for r in edited.run_requests] == ["brand"]


@pytest.mark.slow
def test_an_xlsx_batch_runs_from_the_launchpad_with_no_config(
    instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UI launch of a partition finds its workbook in the prompts folder and runs it."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    write_xlsx(prompts / "brand.xlsx", [["prompt", "seed"], ["A logo of a fox", 5], ["", None]])
    monkeypatch.setenv("IDEOGRAM_PROMPTS_DIR", str(prompts))
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_LATENCY", "0")
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_IMAGE_SCALE", "0.25")
    monkeypatch.delenv("IDEOGRAM_API_KEY", raising=False)
    instance.add_dynamic_partitions("batches", ["brand"])
    result = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance, partition_key="brand"
    )
    assert result.success
    metadata = result.asset_materializations_for_node("batch_images")[0].metadata
    assert metadata["run_stored"].value == 1


@pytest.mark.slow
def test_run_takes_an_xls_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from ideogram_pipeline.cli import main

    for name in ("AWS_ENDPOINT_URL", "IDEOGRAM_PROMPTS_DIR", "IDEOGRAM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDEOGRAM_STORAGE", str(tmp_path / "data"))
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_LATENCY", "0")
    monkeypatch.setenv("IDEOGRAM_SIMULATOR_IMAGE_SCALE", "0.25")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    batch = write_xls(tmp_path / "catalogue.xls", [["prompt", "seed"], ["A teapot", 3], ["", 4]])
    result = CliRunner().invoke(main, ["run", str(batch)])
    assert result.exit_code == 0, result.output
    assert "batch catalogue: 2 rows" in result.output
    assert "rejected" in result.output


def test_a_workbook_that_makes_the_reader_panic_fails_with_one_message(tmp_path: Path) -> None:
    """tests/data/damaged.xls: an xlwt workbook with a few bytes flipped, which makes the Rust
    reader panic (pyo3's PanicException is a BaseException): still one BatchFileError."""
    damaged = Path(__file__).parent / "data" / "damaged.xls"
    with pytest.raises(BatchFileError) as error:
        load_batch(damaged)
    assert "not a readable spreadsheet (XLS container, but: slice index" in str(error.value)

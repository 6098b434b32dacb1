"""CSV batches: whole-file errors, per-row validation, both column sets, real prompt files.

Nothing is faked: every test writes a real file under ``tmp_path`` (or parses bytes) and
reads it with the production code. The drift test reads Ideogram's enums from the schema
bundled in the package, so it always runs; only the checks against the full 998-prompt file
need ``../shared/reference/`` and skip without it (``tests/data/`` carries a sample derived
from it by ``scripts/sample_prompts.py``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ideogram_pipeline.batches.columns import COLUMNS, IDEOGRAM_UI_COLUMNS, NATIVE_COLUMNS
from ideogram_pipeline.batches.files import Batch, BatchFileError, load_batch, parse_batch
from ideogram_pipeline.batches.rows import validate_cells
from ideogram_pipeline.ideogram import spec
from ideogram_pipeline.ideogram.generation import MODELS, GenerationRequest, RejectedRow

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
REFERENCE = ROOT.parent / "shared" / "reference"
KREA = REFERENCE / "krea-open-prompts-1k.csv"


def write(tmp_path: Path, text: str, name: str = "batch.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def csv_text(rows: list[dict[str, str]]) -> str:
    """A CSV with the union of the rows' keys as header, quoted by the csv module."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    # The default \r\n terminator also makes the writer quote cells holding a lone \r.
    writer = csv.DictWriter(out, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def second_row(tmp_path: Path, **cells: str) -> GenerationRequest | RejectedRow:
    """Parse a file whose row 1 is valid and row 2 has ``cells``; return row 2."""
    good = dict.fromkeys(cells, "")
    good["prompt"] = "a valid first row"
    batch = load_batch(write(tmp_path, csv_text([good, cells])))
    assert isinstance(batch.rows[0], GenerationRequest)
    assert len(batch.rows) == 2
    return batch.rows[1]


def file_error(tmp_path: Path, data: bytes, name: str = "bad.csv") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(BatchFileError) as info:
        load_batch(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# -- CSV validation accepts exactly Ideogram's values ----------------------------------------
#
# Restated from the bundled schema (request_schemas.json), independently of the capability
# table: which schema enum each field of each endpoint uses, and which legacy models take a
# field (the spec's prose limits, kept as data under x-model-limits).

SCHEMA = spec.schema_document()
LEGACY = ("V_1", "V_1_TURBO", "V_2", "V_2_TURBO", "V_2A", "V_2A_TURBO")
#: CSV column -> (its GenerateImageRequestV3 property, its ImageRequest property).
ENUM_COLUMNS = {
    "aspect_ratio": ("aspect_ratio", "aspect_ratio"),
    "resolution": ("resolution", "resolution"),
    "style_type": ("style_type", "style_type"),
    "rendering_speed": ("rendering_speed", None),
    "magic_prompt": ("magic_prompt", "magic_prompt_option"),
}


def _schema_enum(schema: str, prop: str) -> tuple[str, ...]:
    ref = SCHEMA["$defs"][schema]["properties"][prop]["$ref"]
    return tuple(SCHEMA["$defs"][ref.rsplit("/", 1)[-1]]["enum"])


def _spec_values(model: str, column: str) -> tuple[str, ...] | None:
    """The schema's values for ``column`` on ``model``; None when the model lacks it."""
    v3_prop, legacy_prop = ENUM_COLUMNS[column]
    if model == "V_3":
        return _schema_enum("GenerateImageRequestV3", v3_prop)
    limits = SCHEMA["x-model-limits"].get(legacy_prop or "", {"models": LEGACY})["models"]
    if legacy_prop is None or model not in limits:
        return None
    return _schema_enum("ImageRequest", legacy_prop)


def _canonical(value: str) -> str:
    for prefix in ("ASPECT_", "RESOLUTION_"):
        if value.startswith(prefix):
            return value.removeprefix(prefix).replace("_", "x")
    return value


ALL_SPEC_VALUES = sorted(
    {value for model in ("V_3", *LEGACY) for column in ENUM_COLUMNS
     for value in (_spec_values(model, column) or ())}
)  # fmt: skip


def test_the_bundled_schema_is_the_one_validated_against() -> None:
    assert SCHEMA["$defs"]["ModelEnum"]["enum"][:6] == list(LEGACY)
    assert set(SCHEMA["x-model-limits"]) == {"negative_prompt", "style_type", "resolution"}


@pytest.mark.parametrize("column", sorted(ENUM_COLUMNS))
@pytest.mark.parametrize("model", ["V_3", *LEGACY])
def test_csv_accepts_exactly_the_spec_values(model: str, column: str) -> None:
    allowed = _spec_values(model, column)
    if allowed is None:
        # The model lacks the field: any value of it is refused, naming the field.
        value = _schema_enum("GenerateImageRequestV3", ENUM_COLUMNS[column][0])[0]
        row = validate_cells(1, {"prompt": "p", "model": model, column: value})
        assert isinstance(row, RejectedRow) and row.field == column, row
        return
    canonical = {_canonical(value) for value in allowed}
    for value in allowed:  # the endpoint's own spelling is accepted, as the canonical form
        row = validate_cells(1, {"prompt": "p", "model": model, column: value})
        assert isinstance(row, GenerationRequest), (value, row)
        assert getattr(row, column) == _canonical(value)
    for value in ALL_SPEC_VALUES:  # another field's or endpoint's value is refused
        if _canonical(value) in canonical or value in canonical:
            continue
        row = validate_cells(1, {"prompt": "p", "model": model, column: value})
        assert isinstance(row, RejectedRow) and row.field == column, (value, row)
        assert f"is not one of {_canonical(allowed[0])}, " in row.reason, row.reason


@pytest.mark.parametrize("model", ["V_3", *LEGACY])
def test_negative_prompt_goes_to_the_models_the_spec_names(model: str) -> None:
    takes = model == "V_3" or model in SCHEMA["x-model-limits"]["negative_prompt"]["models"]
    row = validate_cells(1, {"prompt": "p", "model": model, "negative_prompt": "blur"})
    if takes:
        assert isinstance(row, GenerationRequest) and row.negative_prompt == "blur"
    else:
        assert isinstance(row, RejectedRow) and row.field == "negative_prompt"


# -- native format -----------------------------------------------------------------------------


def test_native_row_with_every_column(tmp_path: Path) -> None:
    text = (
        "prompt,negative_prompt,model,style_type,aspect_ratio,resolution,rendering_speed,"
        "magic_prompt,seed,num_images,tags\n"
        "  A lighthouse at dusk  , blurry ,v_3,realistic,16:9,,turbo,off, 42 ,4,"
        "sea| coast ||sea\n"
        "A ramen bowl,,V_2_TURBO,ANIME,,RESOLUTION_1024_640,,yes,,,\n"
    )
    batch = load_batch(write(tmp_path, text, "my-batch.csv"))
    assert batch.format == "native"
    assert batch.key == "my-batch"
    assert batch.rejected == ()
    assert batch.requests == batch.rows
    assert batch.rows[0] == GenerationRequest(
        row=1,
        prompt="A lighthouse at dusk",
        model="V_3",
        num_images=4,
        negative_prompt="blurry",
        style_type="REALISTIC",
        aspect_ratio="16x9",
        resolution=None,
        rendering_speed="TURBO",
        magic_prompt="OFF",
        seed=42,
        tags=("sea", "coast"),
    )
    assert batch.rows[1] == GenerationRequest(
        row=2,
        prompt="A ramen bowl",
        model="V_2_TURBO",
        style_type="ANIME",
        resolution="1024x640",
        magic_prompt="ON",
    )


def test_batch_identity(tmp_path: Path) -> None:
    path = write(tmp_path, "prompt\na cat\n", "cats.csv")
    batch = load_batch(path)
    assert batch.source == str(path)
    assert batch.content_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_batch(path, key="custom").key == "custom"
    assert parse_batch(b"prompt\na cat\n").key == "batch"
    with pytest.raises(ValueError, match="empty"):
        parse_batch(b"prompt\na cat\n", key="")


def test_missing_file_is_an_io_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_batch(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("spelling", "model"),
    [
        ("", "V_3"),
        ("V_3", "V_3"),
        ("3.0", "V_3"),
        ("Ideogram 3.0", "V_3"),
        ("v_2", "V_2"),
        ("2.0", "V_2"),
        ("2.0 turbo", "V_2_TURBO"),
        ("V_2_TURBO", "V_2_TURBO"),
        ("2a", "V_2A"),
        ("2A_TURBO", "V_2A_TURBO"),
        ("1.0", "V_1"),
        ("v_1_turbo", "V_1_TURBO"),
    ],
)
def test_model_spellings(tmp_path: Path, spelling: str, model: str) -> None:
    row = second_row(tmp_path, prompt="p", model=spelling)
    assert isinstance(row, GenerationRequest)
    assert row.model == model


@pytest.mark.parametrize("spelling", ["16x9", "16:9", "ASPECT_16_9", "aspect_16_9", " 16 X 9 "])
def test_aspect_ratio_spellings(tmp_path: Path, spelling: str) -> None:
    for model in ("V_3", "V_2"):
        row = second_row(tmp_path, prompt="p", model=model, aspect_ratio=spelling)
        assert isinstance(row, GenerationRequest)
        assert row.aspect_ratio == "16x9"


@pytest.mark.parametrize("spelling", ["1024x1024", "RESOLUTION_1024_1024", "resolution_1024_1024"])
def test_resolution_spellings(tmp_path: Path, spelling: str) -> None:
    for model in ("V_3", "V_2", "V_2_TURBO"):
        row = second_row(tmp_path, prompt="p", model=model, resolution=spelling)
        assert isinstance(row, GenerationRequest)
        assert row.resolution == "1024x1024"


@pytest.mark.parametrize(
    ("spelling", "value"),
    [("on", "ON"), ("TRUE", "ON"), ("yes", "ON"), ("Off", "OFF"), ("false", "OFF"),
     ("no", "OFF"), ("auto", "AUTO")],
)  # fmt: skip
def test_magic_prompt_spellings(tmp_path: Path, spelling: str, value: str) -> None:
    row = second_row(tmp_path, prompt="p", magic_prompt=spelling)
    assert isinstance(row, GenerationRequest)
    assert row.magic_prompt == value


@pytest.mark.parametrize(
    ("spelling", "value"), [("0", 0), ("2147483647", spec.SEED_MAX), ("42.0", 42)]
)
def test_seed_values(tmp_path: Path, spelling: str, value: int) -> None:
    row = second_row(tmp_path, prompt="p", seed=spelling)
    assert isinstance(row, GenerationRequest)
    assert row.seed == value


def test_tags(tmp_path: Path) -> None:
    row = second_row(tmp_path, prompt="p", tags=" b | a ||b| c |  ")
    assert isinstance(row, GenerationRequest)
    assert row.tags == ("b", "a", "c")
    rejected = second_row(tmp_path, prompt=" ", tags="x|y")
    assert isinstance(rejected, RejectedRow)
    assert rejected.tags == ("x", "y")


# -- one rejection rule per case: the row and the field are named ------------------------------

REJECTIONS: list[tuple[str, dict[str, str], str, str]] = [
    ("empty prompt", {"prompt": "   ", "seed": "5"}, "prompt", "is empty"),
    ("long prompt", {"prompt": "x" * 10_001}, "prompt", "10,001 characters"),
    ("NUL in prompt", {"prompt": "a\x00b"}, "prompt", "NUL"),
    ("seed not int", {"seed": "abc"}, "seed", "'abc' is not an integer in 0..2147483647"),
    ("seed float", {"seed": "1.5"}, "seed", "not an integer"),
    ("seed negative", {"seed": "-1"}, "seed", "'-1' is outside 0..2147483647"),
    ("seed too big", {"seed": "2147483648"}, "seed", "outside 0..2147483647"),
    ("seed huge", {"seed": "9" * 5000}, "seed", "outside"),
    ("unknown model", {"model": "V_4"}, "model", "'V_4' is not one of V_3, ideogram-4"),
    ("v3 turbo model", {"model": "3.0 turbo"}, "model", "to TURBO"),
    ("unknown style", {"style_type": "VAPORWAVE"}, "style_type", "not one of AUTO, GENERAL"),
    ("legacy style on v3", {"style_type": "ANIME"}, "style_type", "style types of V_3"),
    ("style on v1", {"model": "V_1", "style_type": "AUTO"}, "style_type", "V_1 does not take"),
    ("bad ratio", {"aspect_ratio": "7x3"}, "aspect_ratio", "'7x3' is not one of 1x3, 3x1, 1x2"),
    ("ratio garbage", {"aspect_ratio": "wide"}, "aspect_ratio", "'wide' is not one of"),
    ("v3-only ratio", {"model": "V_2", "aspect_ratio": "4x5"}, "aspect_ratio", "only for V_3"),
    ("ratio and resolution", {"aspect_ratio": "1x1", "resolution": "1024x1024"}, "resolution",
     "cannot be used together"),
    ("bad resolution", {"resolution": "1000x1000"}, "resolution", "not one of 512x1536"),
    ("legacy-only resolution on v3", {"resolution": "1024x640"}, "resolution", "not one of"),
    ("v3-only resolution on v2", {"model": "V_2", "resolution": "800x1280"}, "resolution",
     "not one of 512x1536"),
    ("resolution on 2a", {"model": "2a", "resolution": "1024x1024"}, "resolution",
     "V_2A does not take a resolution"),
    ("speed on legacy", {"model": "V_2", "rendering_speed": "TURBO"}, "rendering_speed",
     "only for V_3"),
    ("unknown speed", {"rendering_speed": "FAST"}, "rendering_speed",
     "not one of FLASH, TURBO, BALANCED, DEFAULT, QUALITY"),
    ("magic prompt", {"magic_prompt": "maybe"}, "magic_prompt", "not one of AUTO, ON, OFF"),
    ("negative on 2a", {"model": "V_2A_TURBO", "negative_prompt": "blur"}, "negative_prompt",
     "V_2A_TURBO does not support"),
    ("NUL in negative", {"negative_prompt": "a\x00"}, "negative_prompt", "NUL"),
    ("zero images", {"num_images": "0"}, "num_images", "outside 1..8"),
    ("nine images", {"num_images": "9"}, "num_images", "outside 1..8"),
    ("images word", {"num_images": "two"}, "num_images", "not an integer"),
]  # fmt: skip


@pytest.mark.parametrize(("cells", "field", "fragment"), [case[1:] for case in REJECTIONS],
                         ids=[case[0] for case in REJECTIONS])  # fmt: skip
def test_rejection_names_row_and_field(
    tmp_path: Path, cells: dict[str, str], field: str, fragment: str
) -> None:
    row = second_row(tmp_path, **{"prompt": "a cat", **cells})
    assert isinstance(row, RejectedRow), row
    assert row.row == 2
    assert row.field == field
    assert fragment in row.reason
    assert row.error.startswith(f"row 2: field '{field}': ")
    assert "\x00" not in row.prompt


def test_first_problem_is_the_most_useful(tmp_path: Path) -> None:
    row = second_row(tmp_path, prompt="", seed="x", model="nope")
    assert isinstance(row, RejectedRow)
    assert row.field == "prompt"
    # On a legacy model the rule "rendering_speed is V_3 only" beats the value's spelling.
    row = second_row(tmp_path, prompt="p", model="V_2", rendering_speed="warp")
    assert isinstance(row, RejectedRow)
    assert row.field == "rendering_speed"
    assert "only for V_3" in row.reason


def test_long_prompt_within_limit(tmp_path: Path) -> None:
    row = second_row(tmp_path, prompt="word " * 1000)
    assert isinstance(row, GenerationRequest)
    assert len(row.prompt) == 4999  # trimmed


def test_unquoted_comma_is_rejected_not_truncated(tmp_path: Path) -> None:
    batch = load_batch(write(tmp_path, "prompt,seed\na cat, on a mat,7\nfine,1,,\n"))
    rejected, ok = batch.rows
    assert isinstance(rejected, RejectedRow)
    assert (rejected.row, rejected.field) == (1, "prompt")
    assert "not quoted" in rejected.reason
    assert isinstance(ok, GenerationRequest)  # trailing empty cells are harmless


# -- Ideogram web UI format --------------------------------------------------------------------


def test_ideogram_ui_export_sample(tmp_path: Path) -> None:
    text = (
        "prompt,visibility,aspect_ratio,magic_prompt,model,num_images,seed_number,rendering,"
        "negative_prompt\n"
        "a fox,private,16:9,on,3.0,2,123,quality,blurry\n"
        "a poster,public,9:16,off,2.0,1,,turbo,\n"
        "a ramen bowl,private,1:1,on,2a,1,,default,\n"
        "a sketch,private,3:2,off,1.0,1,,quality,text\n"
        "a bowl,private,,,3.0,,,,\n"
    )
    batch = load_batch(write(tmp_path, text))
    assert batch.format == "ideogram-ui"
    assert batch.rejected == ()
    got = [(r.model, r.aspect_ratio, r.rendering_speed, r.magic_prompt, r.seed, r.num_images)
           for r in batch.requests]  # fmt: skip
    assert got == [
        ("V_3", "16x9", "QUALITY", "ON", 123, 2),
        ("V_2_TURBO", "9x16", None, "OFF", None, 1),
        ("V_2A", "1x1", None, "ON", None, 1),
        ("V_1", "3x2", None, "OFF", None, 1),
        ("V_3", None, None, None, None, 1),
    ]
    assert batch.requests[0].negative_prompt == "blurry"


def test_ideogram_ui_rejections_name_ui_columns(tmp_path: Path) -> None:
    text = "prompt,seed_number,rendering,model\na,99999999999,,\nb,,flash,2.0\nc,,sideways,3.0\n"
    batch = load_batch(write(tmp_path, text))
    assert [(r.row, r.field) for r in batch.rejected] == [
        (1, "seed_number"),
        (2, "rendering"),
        (3, "rendering"),
    ]
    assert batch.format == "ideogram-ui"


# -- encodings, quoting, layout ---------------------------------------------------------------


def test_bom_never_reaches_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_text("Prompt,Aspect_Ratio\na cat,16x9\n", encoding="utf-8-sig")
    batch = load_batch(path)
    assert batch.requests[0].aspect_ratio == "16x9"


def test_header_names_trimmed_and_case_insensitive(tmp_path: Path) -> None:
    batch = load_batch(write(tmp_path, " PROMPT , Negative Prompt ,SEED\na,b,3\n"))
    assert batch.requests[0] == GenerationRequest(row=1, prompt="a", negative_prompt="b", seed=3)


def test_quoted_newlines_and_commas(tmp_path: Path) -> None:
    text = 'prompt,tags\r\n"line one,\r\nline two, ""quoted""",x\r\nnext,y\r\n'
    batch = load_batch(write(tmp_path, text))
    assert [r.prompt for r in batch.requests] == ['line one,\r\nline two, "quoted"', "next"]
    assert [r.row for r in batch.rows] == [1, 2]


def test_blank_lines_skipped_but_counted(tmp_path: Path) -> None:
    text = '\nprompt,seed\n\none\n , \n,,\n"two\nlines"\nthree,-5\n\n'
    batch = load_batch(write(tmp_path, text))
    assert [(r.row, type(r).__name__) for r in batch.rows] == [
        (2, "GenerationRequest"),
        (5, "GenerationRequest"),
        (6, "RejectedRow"),
    ]


def test_unknown_columns_ignored(tmp_path: Path) -> None:
    raw = json.dumps({"raw_discord_data": {"seed": 4_000_000_000}})
    batch = load_batch(write(tmp_path, csv_text([{"prompt": "a cat", "raw_data": raw, "x": "?"}])))
    assert batch.requests == (GenerationRequest(row=1, prompt="a cat"),)


def test_semicolon_delimited_file(tmp_path: Path) -> None:
    batch = load_batch(write(tmp_path, "prompt;aspect_ratio\na cat, sitting;16:9\n"))
    assert batch.requests == (
        GenerationRequest(row=1, prompt="a cat, sitting", aspect_ratio="16x9"),
    )


# -- whole-file errors ----------------------------------------------------------------------------


def test_not_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    message = file_error(tmp_path, b"prompt\ncaf\xe9 au lait\n")
    assert "not UTF-8" in message
    assert "byte offset 10" in message
    assert "line 2" in message
    bom_message = file_error(tmp_path, b"\xef\xbb\xbfprompt\n\xff\n")
    assert "byte offset 10" in bom_message  # counted in the file, BOM included


def test_utf16_is_recognised(tmp_path: Path) -> None:
    message = file_error(tmp_path, "prompt\na\n".encode("utf-16"))
    assert "UTF-16" in message


@pytest.mark.parametrize("data", [b"", b"  \n\r\n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    assert "empty" in file_error(tmp_path, data)


@pytest.mark.parametrize("data", [b"prompt\n", b"prompt,seed\n\n,\n  \n"])
def test_header_without_data_rows(tmp_path: Path, data: bytes) -> None:
    assert "has no data rows" in file_error(tmp_path, data)


def test_no_prompt_column_lists_columns(tmp_path: Path) -> None:
    message = file_error(tmp_path, b"text,Seed,aspect ratio\na,1,1x1\n")
    assert "no 'prompt' column" in message
    assert "text, seed, aspect_ratio" in message


def test_duplicate_known_column(tmp_path: Path) -> None:
    assert "appears twice" in file_error(tmp_path, b"prompt,Prompt\na,b\n")


def test_synonym_columns_conflict(tmp_path: Path) -> None:
    assert "'seed' and 'seed_number'" in file_error(tmp_path, b"prompt,seed,seed_number\na,1,2\n")


def test_unterminated_quote_is_fatal(tmp_path: Path) -> None:
    message = file_error(tmp_path, b'prompt\nfine\n"never closed\nrow three\nrow four\n')
    assert "line 3 is never closed" in message


def test_stray_quote_inside_a_cell_is_tolerated(tmp_path: Path) -> None:
    batch = load_batch(write(tmp_path, 'prompt\na 12" vinyl\n"quoted" tail\n'))
    assert [r.prompt for r in batch.requests] == ['a 12" vinyl', "quoted tail"]


# -- real prompt files ------------------------------------------------------------------------


def test_krea_sample_loads(tmp_path: Path) -> None:
    batch = load_batch(DATA / "krea-prompts-sample.csv")
    assert len(batch.rows) == 200
    # The real file has rows with an empty prompt; they are rejected, never dropped. The
    # raw_data column (seeds above Ideogram's maximum) is ignored.
    assert [(r.row, r.field, r.reason) for r in batch.rejected] == [
        (106, "prompt", "is empty"),
        (113, "prompt", "is empty"),
        (159, "prompt", "is empty"),
    ]
    assert all(r.model == "V_3" and r.seed is None for r in batch.requests)


@pytest.mark.parametrize("path", sorted((ROOT / "prompts").glob("*.csv")), ids=lambda p: p.name)
def test_sample_batches_are_all_valid(path: Path) -> None:
    batch = load_batch(path)
    assert batch.rejected == ()
    assert len(batch.rows) >= 5


def test_prompt_samples_match_reference() -> None:
    if not KREA.exists():
        pytest.skip(f"{KREA} not present (a user's clone has no ../shared)")
    spec = importlib.util.spec_from_file_location(
        "sample_prompts", ROOT / "scripts/sample_prompts.py"
    )
    assert spec is not None and spec.loader is not None
    script: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = KREA.read_text(encoding="utf-8-sig")
    expected = (DATA / "krea-prompts-sample.csv").read_text(encoding="utf-8")
    assert script.verbatim_head(text, 200) == expected
    demo = load_batch(ROOT / "prompts" / "krea-sample.csv")
    assert [r.prompt for r in demo.requests] == script.demo_prompts(text)


def test_full_reference_file_is_fast() -> None:
    if not KREA.exists():
        pytest.skip(f"{KREA} not present (a user's clone has no ../shared)")
    started = time.perf_counter()
    batch = load_batch(KREA)
    elapsed = time.perf_counter() - started
    assert len(batch.rows) == 998
    assert {r.field for r in batch.rejected} == {"prompt"}
    assert len(batch.rejected) == 9
    assert elapsed < 0.5, f"parsing took {elapsed:.2f}s"


# -- properties -----------------------------------------------------------------------------------

_TEXTISH = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300).map(lambda s: s.encode("utf-8")),
    st.text(max_size=300).map(lambda s: ("prompt,seed,model\n" + s).encode("utf-8")),
)


@settings(max_examples=200, deadline=None)
@given(_TEXTISH)
def test_any_bytes_give_a_batch_or_a_file_error(data: bytes) -> None:
    try:
        batch = parse_batch(data)
    except BatchFileError as exc:
        assert str(exc).startswith("<bytes>: ")
        return
    assert isinstance(batch, Batch)
    for row in batch.rows:
        assert isinstance(row, GenerationRequest | RejectedRow)
        if isinstance(row, RejectedRow):
            assert row.field and row.reason


_PLAUSIBLE: dict[str, list[str]] = {
    "model": ["", "V_3", "2.0", "2a_turbo", "1.0", "V_2_TURBO", "V_1"],
    "style_type": ["", "AUTO", "ANIME", "realistic"],
    "aspect_ratio": ["", "16:9", "4x5", "ASPECT_10_16", "1x1"],
    "resolution": ["", "1024x1024", "1024x640", "RESOLUTION_1280_800"],
    "rendering_speed": ["", "TURBO", "quality"],
    "rendering": ["", "default", "turbo", "quality", "flash"],
    "magic_prompt": ["", "on", "OFF", "auto"],
    "seed": ["", "0", "42", "2147483647", "2147483648"],
    "seed_number": ["", "7", "-1"],
    "num_images": ["", "1", "8", "9"],
    "negative_prompt": ["", "blurry"],
    "prompt": ["a cat", "", "x" * 10_001],
}


@st.composite
def _rows(draw: st.DrawFn) -> dict[str, str]:
    columns = draw(st.sampled_from([NATIVE_COLUMNS, IDEOGRAM_UI_COLUMNS]))
    chosen = draw(st.lists(st.sampled_from(columns), unique=True, max_size=len(columns)))
    row = {}
    for column in ("prompt", *chosen):
        values = st.sampled_from(_PLAUSIBLE.get(column, ["", "x"])) | st.text(max_size=30)
        row[column] = draw(values)
    return row


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows())
def test_any_cells_give_a_valid_request_or_a_named_rejection(cells: dict[str, str]) -> None:
    try:
        batch = parse_batch(csv_text([cells]).encode("utf-8"))
    except BatchFileError as exc:
        assert "no data rows" in str(exc)
        assert not any(value.strip() for value in cells.values())
        return
    (row,) = batch.rows
    assert row.row == 1
    if isinstance(row, RejectedRow):
        assert row.field in COLUMNS
        assert row.reason
        return
    _assert_sendable(row)


def _assert_sendable(request: GenerationRequest) -> None:
    """What Ideogram's schemas demand of a request, restated from the bundled schema."""
    v3 = request.model == "V_3"
    assert request.model in MODELS
    assert request.prompt and request.prompt == request.prompt.strip()
    assert len(request.prompt) <= 10_000 and "\x00" not in request.prompt
    assert 1 <= request.num_images <= 8
    assert request.seed is None or 0 <= request.seed <= spec.SEED_MAX
    assert not (request.aspect_ratio and request.resolution)
    for column in ENUM_COLUMNS:
        value = getattr(request, column)
        if value is None:
            continue
        allowed = _spec_values(request.model, column)
        assert allowed is not None, (request.model, column)
        assert value in {_canonical(v) for v in allowed}, (request.model, column, value)
    if request.rendering_speed:
        assert v3


@pytest.mark.parametrize(
    ("cells", "model", "speed"),
    [
        ({"model": "ideogram-4", "rendering_speed": "turbo"}, "ideogram-4", "TURBO"),
        ({"model": "4.5"}, "ideogram-4-5", None),
        ({"model": "ideogram-3", "aspect_ratio": "16:9"}, "V_3", None),
    ],
)
def test_v2_models_are_accepted(
    tmp_path: Path, cells: dict[str, str], model: str, speed: str | None
) -> None:
    row = second_row(tmp_path, **{"prompt": "a kite", **cells})
    assert isinstance(row, GenerationRequest), row
    assert (row.model, row.rendering_speed) == (model, speed)


@pytest.mark.parametrize(
    ("cells", "field"),
    [
        ({"model": "ideogram-4", "aspect_ratio": "16x9"}, "aspect_ratio"),
        ({"model": "ideogram-4-5", "style_type": "REALISTIC"}, "style_type"),
        ({"model": "ideogram-4", "rendering_speed": "FLASH"}, "rendering_speed"),
        ({"model": "ideogram-4-5", "negative_prompt": "blur"}, "negative_prompt"),
    ],
)
def test_v2_models_reject_fields_they_lack(
    tmp_path: Path, cells: dict[str, str], field: str
) -> None:
    row = second_row(tmp_path, **{"prompt": "a kite", **cells})
    assert isinstance(row, RejectedRow) and row.field == field, row

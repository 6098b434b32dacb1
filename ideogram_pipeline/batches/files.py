"""Reading a CSV batch of prompts into validated requests and rejected rows.

A batch file is a CSV with a header. Two column sets are understood, in one parser:

- **native**: ``prompt`` (required), ``negative_prompt``, ``model``, ``style_type``,
  ``aspect_ratio``, ``resolution``, ``rendering_speed``, ``magic_prompt``, ``seed``,
  ``num_images``, ``tags`` (``|``-separated);
- **ideogram-ui**: the batch CSV of Ideogram's web UI (``prompt``, ``visibility``,
  ``aspect_ratio`` as ``16:9``, ``magic_prompt`` on/off, ``model`` 3.0/2.0/2a/1.0,
  ``num_images``, ``seed_number``, ``rendering`` default/turbo/quality,
  ``negative_prompt``), recognised by a ``visibility``, ``seed_number`` or ``rendering``
  column, so a user's existing Ideogram file works unchanged.

Two kinds of failure are kept apart on purpose. A file that cannot be a batch at all (not
UTF-8, no header, no ``prompt`` column, no data rows) raises :class:`BatchFileError`, one
clear message naming the file. A bad *row* is data, not an exception: it becomes a
:class:`~ideogram_pipeline.ideogram.records.RejectedRow` naming the column and the allowed
values, so it is recorded with status ``rejected`` and never paid for, while its
neighbours still run.

Row numbers: ``row`` is the 1-based index of the data record after the header (the header
is row 0), which is the spreadsheet line number minus one. Completely blank records are
skipped but still counted, so the numbers keep matching what a person sees.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ideogram_pipeline.ideogram import enums
from ideogram_pipeline.ideogram.records import (
    MODELS,
    V2_ONLY_MODELS,
    V3_MODEL,
    GenerationRequest,
    RejectedRow,
)
from ideogram_pipeline.storage.keys import batch_key_for

__all__ = [
    "COLUMNS",
    "IDEOGRAM_UI_COLUMNS",
    "MAX_NUM_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "NATIVE_COLUMNS",
    "Batch",
    "BatchFileError",
    "BatchFormat",
    "load_batch",
    "parse_batch",
    "validate_cells",
]

#: Ideogram's documented prompt limit, in characters.
MAX_PROMPT_CHARS = 10_000
#: Largest seed the API accepts (``GenerateImageRequestV3.seed.maximum``).
MAX_SEED = 2_147_483_647
#: Largest ``num_images`` the API accepts per request.
MAX_NUM_IMAGES = 8

NATIVE_COLUMNS = (
    "prompt",
    "negative_prompt",
    "model",
    "style_type",
    "aspect_ratio",
    "resolution",
    "rendering_speed",
    "magic_prompt",
    "seed",
    "num_images",
    "tags",
)
IDEOGRAM_UI_COLUMNS = (
    "prompt",
    "visibility",
    "aspect_ratio",
    "magic_prompt",
    "model",
    "num_images",
    "seed_number",
    "rendering",
    "negative_prompt",
)
#: Every column this module reads; a ``RejectedRow.field`` is always one of these.
COLUMNS = tuple(dict.fromkeys(NATIVE_COLUMNS + IDEOGRAM_UI_COLUMNS))

BatchFormat = Literal["native", "ideogram-ui"]

_UI_MARKERS = ("visibility", "seed_number", "rendering")
#: Pairs of columns that set the same thing; a file may carry only one of each.
_SYNONYMS = (("seed", "seed_number"), ("rendering_speed", "rendering"))
#: Large enough for any real cell; the csv default (128 KiB) would reject long JSON columns.
_FIELD_SIZE_LIMIT = 2**31 - 1

_V3_ASPECT_RATIOS = frozenset(enums.ASPECT_RATIOS_V3)
_LEGACY_ASPECT_RATIOS = tuple(
    value.removeprefix("ASPECT_").replace("_", "x") for value in enums.ASPECT_RATIOS_LEGACY
)
_V3_RESOLUTIONS = frozenset(enums.RESOLUTIONS_V3)
_LEGACY_RESOLUTIONS = tuple(
    value.removeprefix("RESOLUTION_").replace("_", "x") for value in enums.RESOLUTIONS_LEGACY
)
_RESOLUTION_MODELS = (V3_MODEL, "ideogram-4", "V_2", "V_2_TURBO")
_NO_NEGATIVE_PROMPT_MODELS = ("V_2A", "V_2A_TURBO", *V2_ONLY_MODELS)
_NO_STYLE_TYPE_MODELS = ("V_1", "V_1_TURBO", *V2_ONLY_MODELS)
#: Models whose speed is a rendering_speed (V_3) or a speed/quality knob on the v2 API.
_SPEED_MODELS = (V3_MODEL, *V2_ONLY_MODELS)
_V2_SPEEDS = ("TURBO", "DEFAULT", "QUALITY")
#: v2 API model paths and version numbers as people write them.
_V2_MODEL_NAMES = {
    "ideogram-3": V3_MODEL,
    "ideogram-4": "ideogram-4",
    "4.0": "ideogram-4",
    "4": "ideogram-4",
    "ideogram-4-5": "ideogram-4-5",
    "4.5": "ideogram-4-5",
}
_MAGIC_PROMPT = {
    "AUTO": "AUTO",
    **dict.fromkeys(("ON", "TRUE", "YES"), "ON"),
    **dict.fromkeys(("OFF", "FALSE", "NO"), "OFF"),
}

_MODEL_RE = re.compile(r"(?:IDEOGRAM)?V?(3|2A|2|1)(?:\.0)?(TURBO)?")
_RATIO_RE = re.compile(r"(?:ASPECT_?)?(\d{1,5})\s*[X:_/×]\s*(\d{1,5})", re.ASCII)
_RESOLUTION_RE = re.compile(r"(?:RESOLUTION_?)?(\d{1,5})\s*[X_*×]\s*(\d{1,5})", re.ASCII)
_INT_RE = re.compile(r"[+-]?(\d+)(?:\.0*)?", re.ASCII)


class BatchFileError(ValueError):
    """The file cannot be a batch at all; the message names the file and the problem."""


@dataclass(frozen=True)
class Batch:
    """One parsed CSV file: every data row, valid or not, in file order.

    ``content_sha256`` hashes the raw bytes, so an edited file is a new run and an unchanged
    one is recognised (the sensor keys runs on it).
    """

    key: str
    source: str
    content_sha256: str
    rows: tuple[GenerationRequest | RejectedRow, ...]
    format: BatchFormat

    @property
    def requests(self) -> tuple[GenerationRequest, ...]:
        """The rows that will be sent to Ideogram."""
        return tuple(row for row in self.rows if isinstance(row, GenerationRequest))

    @property
    def rejected(self) -> tuple[RejectedRow, ...]:
        """The rows that are recorded as ``rejected`` and never sent."""
        return tuple(row for row in self.rows if isinstance(row, RejectedRow))


def load_batch(path: str | os.PathLike[str], key: str | None = None) -> Batch:
    """Read and validate the CSV at ``path``; the batch key defaults to the file's stem,
    escaped by :func:`~ideogram_pipeline.storage.keys.batch_key_for`.

    Raises :class:`BatchFileError` when the file cannot be a batch; ``OSError`` (missing
    file, permissions) is left alone because it is an I/O problem, not a content one.
    """
    source = os.fspath(path)
    data = Path(source).read_bytes()
    stem = Path(source).stem
    return parse_batch(data, source=source, key=batch_key_for(stem) if key is None else key)


def parse_batch(data: bytes, *, source: str = "<bytes>", key: str = "batch") -> Batch:
    """Parse CSV bytes into a :class:`Batch`; ``source`` only labels error messages."""
    if not key:
        raise ValueError("batch key must not be empty")
    text = _decode(data, source)
    header, body = _split_header(text, source)
    columns = _column_index(header, source)
    if "prompt" not in columns:
        # repr() exposes invisible characters such as a zero-width space in "prompt\u200b".
        found = ", ".join(n if n.isprintable() else repr(n) for n in columns) or "none"
        raise BatchFileError(f"{source}: no 'prompt' column (columns found: {found})")
    rows: list[GenerationRequest | RejectedRow] = []
    for number, record in enumerate(body, start=1):
        if not any(cell.strip() for cell in record):
            continue
        rows.append(_parse_row(number, record, columns, len(header)))
    if not rows:
        raise BatchFileError(f"{source}: has no data rows (only a header)")
    is_ui = any(marker in columns for marker in _UI_MARKERS)
    return Batch(
        key=key,
        source=source,
        content_sha256=hashlib.sha256(data).hexdigest(),
        rows=tuple(rows),
        format="ideogram-ui" if is_ui else "native",
    )


# -- whole-file reading ---------------------------------------------------------------------


def _decode(data: bytes, source: str) -> str:
    """Decode as ``utf-8-sig`` (a BOM never reaches the header), with a byte offset on error."""
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = data.count(b"\n", 0, offset) + 1
        hint = ""
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            hint = " (it looks like UTF-16)"
        raise BatchFileError(
            f"{source}: not UTF-8 text{hint}: byte 0x{data[offset]:02x} at byte offset "
            f"{offset} (line {line}); save the file as 'CSV UTF-8'"
        ) from exc
    if not text.strip():
        raise BatchFileError(f"{source}: file is empty (expected a header with a 'prompt' column)")
    return text


def _split_header(text: str, source: str) -> tuple[list[str], list[list[str]]]:
    """The header (first non-blank record) and the records after it.

    Comma is the delimiter; semicolon and tab are tried only when a comma header has no
    ``prompt`` column, which is what spreadsheets in some locales write.
    """
    header: list[str] = []
    body: list[list[str]] = []
    for delimiter in (",", ";", "\t"):
        records = _read_records(text, delimiter, source)
        start = next((i for i, rec in enumerate(records) if any(c.strip() for c in rec)), None)
        if start is None:
            raise BatchFileError(f"{source}: file is empty (no header row)")
        candidate, rest = records[start], records[start + 1 :]
        if delimiter == ",":
            header, body = candidate, rest
        if "prompt" in (_normalise_name(name) for name in candidate):
            return candidate, rest
    return header, body


def _read_records(text: str, delimiter: str, source: str) -> list[list[str]]:
    """All CSV records; an unterminated quote is fatal because it swallows later rows."""
    csv.field_size_limit(_FIELD_SIZE_LIMIT)
    strict = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records: list[list[str]] = []
    last_line = 0
    try:
        for record in strict:
            records.append(record)
            last_line = strict.line_num
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise BatchFileError(
                f"{source}: the quoted cell starting on line {last_line + 1} is never closed "
                "(an unmatched '\"'); it would swallow every row after it"
            ) from exc
        # Anything else strict mode dislikes (a stray quote after a quoted cell) is read the
        # forgiving way spreadsheets read it.
        lenient = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            return list(lenient)
        except csv.Error as exc2:
            raise BatchFileError(f"{source}: line {lenient.line_num}: {exc2}") from exc2
    return records


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def _column_index(header: list[str], source: str) -> dict[str, int]:
    """Header name -> cell index, names trimmed and case-folded; unknown names are kept
    (so errors can list them) but never read."""
    index: dict[str, int] = {}
    for position, raw in enumerate(header):
        name = _normalise_name(raw)
        if not name:
            continue
        if name in index and name in COLUMNS:
            raise BatchFileError(
                f"{source}: column '{name}' appears twice (columns {index[name] + 1} and "
                f"{position + 1}); keep one"
            )
        index.setdefault(name, position)
    for first, second in _SYNONYMS:
        if first in index and second in index:
            raise BatchFileError(
                f"{source}: columns '{first}' and '{second}' both set the same thing; keep one"
            )
    return index


# -- one row ----------------------------------------------------------------------------------


class _Reject(Exception):
    """Internal: the first problem found in a row (becomes a RejectedRow, never escapes)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


def _parse_row(
    number: int, record: list[str], columns: dict[str, int], width: int
) -> GenerationRequest | RejectedRow:
    def cell(name: str) -> str:
        position = columns.get(name)
        if position is None or position >= len(record):
            return ""
        return record[position].strip()

    prompt = cell("prompt")
    tags = tuple(dict.fromkeys(tag.strip() for tag in cell("tags").split("|") if tag.strip()))
    try:
        if any(extra.strip() for extra in record[width:]):
            raise _Reject(
                "prompt",
                f"the row has {len(record)} cells but the header has {width} columns; "
                "a cell containing a comma is probably not quoted",
            )
        return _validate(number, prompt, tags, cell)
    except _Reject as problem:
        return RejectedRow(
            row=number,
            field=problem.field,
            reason=problem.reason,
            prompt=prompt.replace("\x00", "\ufffd"),  # NUL breaks some stores downstream
            tags=tags,
        )


def validate_cells(
    number: int, cells: Mapping[str, str], tags: tuple[str, ...] = ()
) -> GenerationRequest | RejectedRow:
    """Validate one row given as native column name -> cell text.

    For code that changes a request after parsing (run-level overrides in
    :mod:`ideogram_pipeline.batches.overrides`): the row is checked by the same rules as a CSV row,
    so every rule lives here once.
    """
    prompt = cells.get("prompt", "").strip()
    try:
        return _validate(number, prompt, tags, lambda name: cells.get(name, "").strip())
    except _Reject as problem:
        return RejectedRow(number, problem.field, problem.reason, prompt, tags)


def _validate(
    number: int, prompt: str, tags: tuple[str, ...], cell: Callable[[str], str]
) -> GenerationRequest:
    """Check the fields in the order that gives the most useful first message: the prompt,
    then the model (every other rule depends on it), then each parameter."""
    _check_text("prompt", prompt, required=True)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _Reject(
            "prompt", f"is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,}"
        )
    model = _parse_model(cell("model"))
    if cell("rendering"):
        model, rendering_speed = _parse_ui_rendering(cell("rendering"), model)
    else:
        rendering_speed = _parse_rendering_speed(cell("rendering_speed"), model)
    seed_column = "seed_number" if cell("seed_number") else "seed"
    seed = _parse_int(seed_column, cell(seed_column), 0, MAX_SEED)
    num_images = _parse_int("num_images", cell("num_images"), 1, MAX_NUM_IMAGES)
    magic_prompt = _parse_magic_prompt(cell("magic_prompt"))
    if cell("aspect_ratio") and cell("resolution"):
        raise _Reject("resolution", "aspect_ratio and resolution cannot be used together")
    aspect_ratio = _parse_aspect_ratio(cell("aspect_ratio"), model)
    resolution = _parse_resolution(cell("resolution"), model)
    style_type = _parse_style_type(cell("style_type"), model)
    negative_prompt = cell("negative_prompt")
    if negative_prompt:
        if model in _NO_NEGATIVE_PROMPT_MODELS:
            raise _Reject("negative_prompt", f"{model} does not support a negative prompt")
        _check_text("negative_prompt", negative_prompt, required=False)
    return GenerationRequest(
        row=number,
        prompt=prompt,
        model=model,
        num_images=1 if num_images is None else num_images,
        negative_prompt=negative_prompt or None,
        style_type=style_type,
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        rendering_speed=rendering_speed,
        magic_prompt=magic_prompt,
        seed=seed,
        tags=tags,
    )


def _show(value: str) -> str:
    """A cell value quoted for a message, shortened so one bad cell cannot flood a log."""
    if len(value) <= 60:
        return repr(value)
    return f"{value[:57]!r}... ({len(value):,} characters)"


def _not_one_of(value: str, allowed: tuple[str, ...] | list[str], note: str = "") -> str:
    return f"{_show(value)} is not one of {', '.join(allowed)}{note}"


def _check_text(field: str, value: str, *, required: bool) -> None:
    if required and not value:
        raise _Reject(field, "is empty")
    position = value.find("\x00")
    if position >= 0:
        raise _Reject(
            field, f"contains a NUL character (\\x00) at position {position + 1}; remove it"
        )


def _parse_model(raw: str) -> str:
    if not raw:
        return V3_MODEL
    if raw.lower() in _V2_MODEL_NAMES:
        return _V2_MODEL_NAMES[raw.lower()]
    match = _MODEL_RE.fullmatch(re.sub(r"[\s_-]", "", raw.upper()))
    if match is None:
        note = " (3.0, 2.0, 2a, 1.0 and turbo spellings such as 2a_turbo work too)"
        raise _Reject("model", _not_one_of(raw, MODELS, note))
    version, turbo = match.groups()
    if version == "3":
        if turbo:
            raise _Reject(
                "model", "V_3 has no TURBO model; set rendering_speed (UI: rendering) to TURBO"
            )
        return V3_MODEL
    return f"V_{version}_TURBO" if turbo else f"V_{version}"


def _parse_rendering_speed(raw: str, model: str) -> str | None:
    if not raw:
        return None
    if model not in _SPEED_MODELS:
        faster = model if model.endswith("_TURBO") else f"{model}_TURBO"
        raise _Reject(
            "rendering_speed",
            f"is only for V_3 and the v2 models; {model} has no rendering speed "
            f"(use model {faster} for speed)",
        )
    value = raw.upper()
    if model in V2_ONLY_MODELS and value not in _V2_SPEEDS:
        raise _Reject("rendering_speed", _not_one_of(raw, _V2_SPEEDS, f" (for {model})"))
    if value not in enums.RENDERING_SPEEDS:
        raise _Reject("rendering_speed", _not_one_of(raw, enums.RENDERING_SPEEDS))
    return value


def _parse_ui_rendering(raw: str, model: str) -> tuple[str, str | None]:
    """Ideogram UI ``rendering``: a speed for 3.0; for legacy models ``turbo`` picks the
    ``_TURBO`` model and default/quality keep the model as written."""
    value = raw.upper()
    if value not in enums.RENDERING_SPEEDS:
        allowed = [speed.lower() for speed in enums.RENDERING_SPEEDS]
        raise _Reject("rendering", _not_one_of(raw, allowed))
    if model in _SPEED_MODELS:
        return model, _parse_rendering_speed(raw, model)
    if value == "TURBO":
        return (model if model.endswith("_TURBO") else f"{model}_TURBO"), None
    if value in ("DEFAULT", "QUALITY"):
        return model, None
    raise _Reject(
        "rendering", f"{_show(raw)} is only for 3.0; {model} takes default, quality or turbo"
    )


def _parse_int(field: str, raw: str, low: int, high: int) -> int | None:
    """An integer in ``low..high``; ``42.0`` is accepted because spreadsheets write it."""
    if not raw:
        return None
    match = _INT_RE.fullmatch(raw)
    if match is None:
        raise _Reject(field, f"{_show(raw)} is not an integer in {low}..{high}")
    # Checking the length first keeps int() away from absurdly long digit strings.
    too_long = len(match.group(1).lstrip("0")) > len(str(high))
    value = 0 if too_long else int(raw.split(".")[0])
    if too_long or not low <= value <= high:
        raise _Reject(field, f"{_show(raw)} is outside {low}..{high}")
    return value


def _parse_magic_prompt(raw: str) -> str | None:
    if not raw:
        return None
    value = _MAGIC_PROMPT.get(raw.upper())
    if value is None:
        note = " (on/off, true/false and yes/no work too)"
        raise _Reject("magic_prompt", _not_one_of(raw, enums.MAGIC_PROMPT_OPTIONS, note))
    return value


def _parse_aspect_ratio(raw: str, model: str) -> str | None:
    """Accept ``16x9``, ``16:9`` and ``ASPECT_16_9``; return the canonical ``16x9``."""
    if not raw:
        return None
    if model in V2_ONLY_MODELS:
        raise _Reject("aspect_ratio", f"{model} takes no aspect_ratio; use resolution")
    match = _RATIO_RE.fullmatch(raw.upper())
    value = f"{int(match.group(1))}x{int(match.group(2))}" if match else ""
    if model == V3_MODEL:
        if value not in _V3_ASPECT_RATIOS:
            raise _Reject("aspect_ratio", _not_one_of(raw, enums.ASPECT_RATIOS_V3))
        return value
    if value not in _LEGACY_ASPECT_RATIOS:
        note = f"; {value} is only for V_3" if value in _V3_ASPECT_RATIOS else ""
        raise _Reject("aspect_ratio", _not_one_of(raw, _LEGACY_ASPECT_RATIOS, note))
    return value


def _parse_resolution(raw: str, model: str) -> str | None:
    """Accept ``1024x1024`` and ``RESOLUTION_1024_1024``; return the canonical form."""
    if not raw:
        return None
    if model not in _RESOLUTION_MODELS:
        raise _Reject(
            "resolution",
            f"{model} does not take a resolution (only {', '.join(_RESOLUTION_MODELS)} do); "
            "use aspect_ratio",
        )
    match = _RESOLUTION_RE.fullmatch(raw.upper())
    value = f"{int(match.group(1))}x{int(match.group(2))}" if match else ""
    if model in (V3_MODEL, "ideogram-4"):
        if value not in _V3_RESOLUTIONS:
            raise _Reject("resolution", _not_one_of(raw, enums.RESOLUTIONS_V3))
        return value
    if value not in _LEGACY_RESOLUTIONS:
        raise _Reject("resolution", _not_one_of(raw, _LEGACY_RESOLUTIONS))
    return value


def _parse_style_type(raw: str, model: str) -> str | None:
    if not raw:
        return None
    if model in _NO_STYLE_TYPE_MODELS:
        raise _Reject("style_type", f"{model} does not take a style type (V_2, V_2A, V_3 do)")
    value = re.sub(r"[\s-]+", "_", raw.upper())
    allowed = enums.STYLE_TYPES_V3 if model == V3_MODEL else enums.STYLE_TYPES_LEGACY
    if value not in allowed:
        raise _Reject("style_type", _not_one_of(raw, allowed, f" (the style types of {model})"))
    return value

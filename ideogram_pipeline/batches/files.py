"""Reading a batch file into rows: the whole-file part of batch validation.

A batch file is a CSV with a header, or an Excel workbook (``.xlsx``/``.xls``, first sheet,
read by :mod:`ideogram_pipeline.batches.spreadsheets`) laid out the same way, in one of the
column sets of :mod:`ideogram_pipeline.batches.columns`. Each data row is validated by
:mod:`ideogram_pipeline.batches.rows`.

Two kinds of failure are kept apart on purpose. A file that cannot be a batch at all (not
UTF-8, no header, no ``prompt`` column, no data rows) raises :class:`BatchFileError`, one
clear message naming the file. A bad *row* is data, not an exception: it becomes a
:class:`~ideogram_pipeline.ideogram.generation.RejectedRow` naming the column and the allowed
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
from dataclasses import dataclass
from pathlib import Path

from ideogram_pipeline.batches.columns import (
    COLUMNS,
    SYNONYMS,
    UI_MARKERS,
    BatchFormat,
    normalise_name,
)
from ideogram_pipeline.batches.rows import validate_row
from ideogram_pipeline.batches.spreadsheets import (
    SPREADSHEET_SUFFIXES,
    SpreadsheetError,
    read_first_sheet,
    sniff,
)
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.storage.keys import batch_key_for

__all__ = [
    "Batch",
    "BatchFileError",
    "BatchFormat",
    "load_batch",
    "parse_batch",
]

#: Large enough for any real cell; the csv default (128 KiB) would reject long JSON columns.
_FIELD_SIZE_LIMIT = 2**31 - 1


class BatchFileError(ValueError):
    """The file cannot be a batch at all; the message names the file and the problem."""


@dataclass(frozen=True)
class Batch:
    """One parsed batch file: every data row, valid or not, in file order.

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
    """Read and validate the batch file (CSV, XLSX or XLS) at ``path``; the batch key
    defaults to the file's stem, escaped by :func:`~ideogram_pipeline.storage.keys.batch_key_for`.

    Raises :class:`BatchFileError` when the file cannot be a batch; ``OSError`` (missing
    file, permissions) is left alone because it is an I/O problem, not a content one.
    """
    source = os.fspath(path)
    data = Path(source).read_bytes()
    stem = Path(source).stem
    return parse_batch(data, source=source, key=batch_key_for(stem) if key is None else key)


def parse_batch(data: bytes, *, source: str = "<bytes>", key: str = "batch") -> Batch:
    """Parse a batch file's bytes into a :class:`Batch`.

    ``source`` labels error messages, and its ending chooses the reader: ``.xlsx``/``.xls``
    are read as workbooks, anything else as CSV.
    """
    if not key:
        raise ValueError("batch key must not be empty")
    header, body = _records(data, source)
    columns = _column_index(header, source)
    if "prompt" not in columns and "operation" not in columns:  # describe needs no prompt
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
    is_ui = any(marker in columns for marker in UI_MARKERS)
    return Batch(
        key=key,
        source=source,
        content_sha256=hashlib.sha256(data).hexdigest(),
        rows=tuple(rows),
        format="ideogram-ui" if is_ui else "native",
    )


# -- whole-file reading ---------------------------------------------------------------------


def _records(data: bytes, source: str) -> tuple[list[str], list[list[str]]]:
    """The header and the records after it, from a workbook or from CSV text."""
    suffix = Path(source).suffix.lower()
    if suffix in SPREADSHEET_SUFFIXES:
        try:
            records = read_first_sheet(data, suffix)
        except SpreadsheetError as exc:
            raise BatchFileError(f"{source}: {exc}") from exc
        start = next((i for i, rec in enumerate(records) if any(c.strip() for c in rec)), None)
        if start is None:
            raise BatchFileError(
                f"{source}: the first sheet is empty (expected a header with a 'prompt' column)"
            )
        return records[start], records[start + 1 :]
    kind = sniff(data)
    if kind in ("xlsx", "xls"):
        named = suffix or "CSV"
        raise BatchFileError(
            f"{source}: looks like an {kind.upper()} workbook saved as {named}; name the file "
            f".{kind} (Excel batches are read as they are) or save it as 'CSV UTF-8'"
        )
    return _split_header(_decode(data, source), source)


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
        if "prompt" in (normalise_name(name) for name in candidate):
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


def _column_index(header: list[str], source: str) -> dict[str, int]:
    """Header name -> cell index, names trimmed and case-folded; unknown names are kept
    (so errors can list them) but never read."""
    index: dict[str, int] = {}
    for position, raw in enumerate(header):
        name = normalise_name(raw)
        if not name:
            continue
        if name in index and name in COLUMNS:
            raise BatchFileError(
                f"{source}: column '{name}' appears twice (columns {index[name] + 1} and "
                f"{position + 1}); keep one"
            )
        index.setdefault(name, position)
    for first, second in SYNONYMS:
        if first in index and second in index:
            raise BatchFileError(
                f"{source}: columns '{first}' and '{second}' both set the same thing; keep one"
            )
    return index


# -- one row ----------------------------------------------------------------------------------


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
    if any(extra.strip() for extra in record[width:]):
        return RejectedRow(
            row=number,
            field="prompt",
            reason=f"the row has {len(record)} cells but the header has {width} columns; "
            "a cell containing a comma is probably not quoted",
            prompt=prompt.replace("\x00", "\ufffd"),  # NUL breaks some stores downstream
            tags=tags,
        )
    return validate_row(number, prompt, tags, cell)

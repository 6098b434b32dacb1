"""Excel batch files (``.xlsx``, ``.xls``): the first sheet read into records, like CSV lines.

Why a reader of its own: designers keep batches in spreadsheets, and Ideogram's own batch
feature takes XLS and XLSX files with the same columns as its CSV. Reading the workbook
here, into the same list-of-text-records a CSV becomes, means every column rule, row number
and message stays the one :mod:`ideogram_pipeline.batches.files` already has.

``python-calamine`` reads both formats. It never evaluates a formula: a formula cell is read
as the value the spreadsheet program cached when it last saved the file (an empty cell when
nothing was ever cached, e.g. a file written by a library that does not calculate).

Cells become the text a person sees: ``42`` for a whole number (spreadsheets store every
number as a float, so ``42.0`` would otherwise reach the seed column), ``true``/``false``
for booleans, ISO dates. Blank rows are kept, so row numbers match the sheet's line numbers.

The module also sniffs the first bytes of a file, so a workbook saved under ``.csv`` (or a
CSV renamed ``.xlsx``) is named for what it is instead of failing as "not UTF-8".
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Sequence
from typing import Literal

from python_calamine import CalamineWorkbook

__all__ = [
    "BATCH_SUFFIXES",
    "SPREADSHEET_SUFFIXES",
    "SpreadsheetError",
    "cell_text",
    "is_batch_file_name",
    "read_first_sheet",
    "sniff",
]

#: File name endings read as spreadsheets (lower-case, with the dot).
SPREADSHEET_SUFFIXES = (".xlsx", ".xls")
#: Every file name ending a batch may have: what ``run``, the sensor and the launchpad read.
BATCH_SUFFIXES = (".csv", *SPREADSHEET_SUFFIXES)

#: What the first bytes say a file is: an XLSX workbook, an OLE2 compound file (legacy
#: ``.xls``), another ZIP archive (``.docx``, ``.ods``, ...), or none of these (text, we hope).
Sniffed = Literal["xlsx", "xls", "zip", "other"]

_ZIP_MAGIC = b"PK\x03\x04"
_OLE2_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")


class SpreadsheetError(ValueError):
    """The bytes are not a readable workbook; the message says what they look like."""


def is_batch_file_name(name: str) -> bool:
    """Whether a file called ``name`` is a batch file (case-insensitive ending)."""
    return name.lower().endswith(BATCH_SUFFIXES) and not name.startswith(("~$", ".~lock"))


def sniff(data: bytes) -> Sniffed:
    """The container kind the first bytes announce."""
    if data.startswith(_ZIP_MAGIC):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except zipfile.BadZipFile:
            return "xlsx"  # damaged or truncated: let the reader say what is wrong
        return "xlsx" if any(name.startswith("xl/") for name in names) else "zip"
    if data.startswith(_OLE2_MAGIC):
        return "xls"
    return "other"


def cell_text(value: object) -> str:
    """One cell as the text a person sees in the sheet."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**63:
            return str(int(value))
        return repr(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    return str(value)


def read_first_sheet(data: bytes, suffix: str) -> list[list[str]]:
    """Every row of the workbook's first sheet as text cells, blank rows included.

    Raises :class:`SpreadsheetError` with one sentence when the bytes are not a workbook of
    either format (a CSV renamed ``.xlsx``, a Word document, a truncated download).
    """
    kind = sniff(data)
    if kind == "zip":
        raise SpreadsheetError(
            f"not a spreadsheet: a {suffix} file must be an Excel workbook, and this one is "
            "a ZIP archive of something else; save it from the spreadsheet program as .xlsx"
        )
    if kind == "other":
        looks = "text (a CSV file?)" if _looks_like_text(data) else "neither XLSX nor XLS"
        raise SpreadsheetError(
            f"not a spreadsheet: a {suffix} file must be an Excel workbook, and this one is "
            f"{looks}; save it from the spreadsheet program as .xlsx, or name it .csv"
        )
    try:
        rows = _first_sheet(data)
    except SpreadsheetError:
        raise
    except BaseException as exc:
        # A damaged workbook can make the Rust reader panic: pyo3 raises PanicException, a
        # BaseException, which must become this one clear message, not a crashed sensor.
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpreadsheetError(
            f"not a readable spreadsheet ({kind.upper()} container, but: {problem}); open it "
            "in the spreadsheet program and save it again as .xlsx"
        ) from exc
    return [[cell_text(value) for value in row] for row in rows]


def _first_sheet(data: bytes) -> Sequence[Sequence[object]]:
    workbook = CalamineWorkbook.from_filelike(io.BytesIO(data))
    if not workbook.sheet_names:
        raise SpreadsheetError("the workbook has no sheets")
    return workbook.get_sheet_by_index(0).to_python(skip_empty_area=False)


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start > len(head) - 4  # a multi-byte character cut at the boundary
    return True

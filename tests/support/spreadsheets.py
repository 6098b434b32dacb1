"""Real Excel files for tests: ``.xlsx`` written by openpyxl, ``.xls`` by xlwt.

openpyxl writes formulas without the value a spreadsheet program caches on save (it does not
calculate), so :func:`write_xlsx` can add those cached values to the sheet XML afterwards,
exactly where Excel and LibreOffice put them (``<c><f>formula</f><v>value</v></c>``): the file
is then what a designer's saved workbook holds.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import openpyxl
import xlwt

Cell = str | int | float | bool | None


def write_xlsx(
    path: Path,
    rows: Sequence[Sequence[Cell]],
    *,
    cached: Mapping[str, str | float] | None = None,
    extra_sheets: Mapping[str, Sequence[Sequence[Cell]]] | None = None,
) -> Path:
    """Write ``rows`` to the first sheet; ``cached`` maps a formula cell (``"A3"``) to the
    value the spreadsheet program would have cached for it."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Batch"
    for row in rows:
        sheet.append(list(row))
    for name, other in (extra_sheets or {}).items():
        extra = workbook.create_sheet(name)
        for row in other:
            extra.append(list(row))
    buffer = io.BytesIO()
    workbook.save(buffer)
    data = buffer.getvalue()
    if cached:
        data = _with_cached_values(data, cached)
    path.write_bytes(data)
    return path


def _with_cached_values(data: bytes, cached: Mapping[str, str | float]) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                xml = content.decode("utf-8")
                for ref, value in cached.items():
                    kind = ' t="str"' if isinstance(value, str) else ""
                    pattern = re.compile(rf'<c r="{ref}"([^>]*)><f>(.*?)</f><v\s*/>')
                    xml, found = pattern.subn(
                        lambda m, r=ref, k=kind, v=value: (
                            f'<c r="{r}"{m.group(1)}{k}><f>{m.group(2)}</f><v>{v}</v>'
                        ),
                        xml,
                    )
                    assert found == 1, f"no formula cell {ref} in the sheet"
                content = xml.encode("utf-8")
            target.writestr(item, content)
    return out.getvalue()


def write_xls(path: Path, rows: Sequence[Sequence[Cell]]) -> Path:
    """Write ``rows`` to the first sheet of a legacy Excel 97-2003 (BIFF8) workbook."""
    workbook = xlwt.Workbook()
    sheet = workbook.add_sheet("Batch")
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is not None:
                sheet.write(r, c, value)
    workbook.save(str(path))
    return path

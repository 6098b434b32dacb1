"""Export chosen images with their metadata to a folder or a ZIP file.

``export --where "SQL condition" --to DIR|FILE.zip`` selects records from the
``generations`` view and writes:

- ``images/<file>.png``: each selected stored image, exactly the stored bytes (text chunks
  included, so each file still describes itself), checked against the recorded SHA-256;
  records linked as duplicates share their original's file;
- ``metadata.parquet`` and ``metadata.csv``: every selected record (any status) plus an
  ``export_path`` column naming its file in the export (empty when it has none), and its
  ``public_url`` (with ``IDEOGRAM_PUBLIC_BASE_URL`` set, also for images stored before it
  was: the base plus the key). CSV cells
  go through :func:`~ideogram_pipeline.safe_output.neutralise_csv_cell`, so a prompt
  starting with ``=`` cannot run as a spreadsheet formula; lists are joined with ``|``;
- ``export.json``: what was asked (the condition), when, from which storage root, counts.

**The condition is SQL by design**: it is the user's own filter over their own history,
with exactly the power of ``ideogram-pipeline query`` (no privilege boundary is crossed), so
it is placed in the query as written, in parentheses. Nothing else is interpolated.

The export appears whole or not at all: it is written to a temporary sibling and renamed
into place. An existing non-empty folder or an existing ZIP is never overwritten.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ideogram_pipeline.safe_output import csv_cell

if TYPE_CHECKING:
    import pyarrow as pa

    from ideogram_pipeline.settings import Settings
    from ideogram_pipeline.storage import ObjectStore

__all__ = ["ExportError", "ExportResult", "csv_cell", "export"]

#: Images fetched ahead of the writer: bounded memory, parallel reads from S3.
FETCH_WINDOW = 16


class ExportError(ValueError):
    """The export cannot be made as asked (bad condition, target exists, nothing matches)."""


@dataclass
class ExportResult:
    target: Path
    records: int
    images: int
    bytes_written: int
    problems: list[str] = field(default_factory=list)


def _select(settings: Settings, store: ObjectStore, where: str) -> pa.Table:
    import duckdb

    from ideogram_pipeline.history.sandbox import (
        QueryRefused,
        check_statements,
        sandboxed_connection,
    )

    if not where.strip():
        raise ExportError("--where needs a condition, e.g. \"batch = 'spring'\" or 'true'")
    # The condition is the user's own SQL: it runs inside the query boundary (reads under
    # the storage root only), and may not smuggle in a second statement.
    sql = f'SELECT * FROM generations WHERE ({where}) ORDER BY created_at, batch, "row", id'
    con = sandboxed_connection(settings, store, sql=sql)
    try:
        check_statements(con, sql)
        if len(con.extract_statements(sql)) != 1:
            raise ExportError("--where must be one condition, not several statements")
        return con.execute(sql).fetch_arrow_table()
    except QueryRefused as exc:
        raise ExportError(f"the --where condition was refused: {exc}") from None
    except duckdb.Error as exc:
        raise ExportError(f"the --where condition failed: {exc}") from None
    finally:
        con.close()


def _fetch(store: ObjectStore, jobs: list[tuple[str, str]]) -> Iterator[tuple[str, bytes | str]]:
    """``(image_key, bytes or error text)`` in order, at most FETCH_WINDOW in flight."""

    def get(job: tuple[str, str]) -> bytes | str:
        key, expected = job
        try:
            data = store.get_bytes(key)
        except Exception as exc:
            return f"{key}: cannot read ({exc})"
        if expected and hashlib.sha256(data).hexdigest() != expected:
            return f"{key}: bytes do not match the recorded sha256"
        return data

    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, len(jobs), FETCH_WINDOW):
            window = jobs[start : start + FETCH_WINDOW]
            yield from zip((key for key, _ in window), pool.map(get, window), strict=True)


class _Writer:
    """Writes named files into a folder or a ZIP, counting bytes."""

    def __init__(self, path: Path, as_zip: bool) -> None:
        self.path = path
        self.bytes = 0
        self.zip = zipfile.ZipFile(path, "w", allowZip64=True) if as_zip else None

    def write(self, name: str, data: bytes, *, compress: bool = True) -> None:
        self.bytes += len(data)
        if self.zip is not None:
            method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            self.zip.writestr(name, data, compress_type=method)
        else:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _check_target(target: Path) -> bool:
    """True for a ZIP target. Refuses to overwrite anything that holds data."""
    as_zip = target.suffix.lower() == ".zip"
    if as_zip and target.exists():
        raise ExportError(f"{target} already exists; choose a new file name")
    if not as_zip and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{target} exists and is not an empty folder")
    if not target.parent.is_dir():
        raise ExportError(f"folder {target.parent} does not exist")
    return as_zip


def _csv_bytes(table: pa.Table) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow([csv_cell(value) for value in row.values()])
    return out.getvalue().encode("utf-8")


def _with_public_urls(table: pa.Table, base: str | None) -> pa.Table:
    """``public_url`` filled for stored images that lack one (recorded before the base)."""
    import pyarrow as pa

    from ideogram_pipeline.storage.public_urls import public_url

    if base is None or "public_url" not in table.column_names:
        return table
    rows = table.select(["status", "image_key", "public_url"]).to_pylist()
    urls = [
        row["public_url"]
        or (public_url(base, row["image_key"]) if row["status"] == "stored" else None)
        for row in rows
    ]
    position = table.schema.get_field_index("public_url")
    return table.set_column(position, "public_url", pa.array(urls, pa.string()))


def export(settings: Settings, store: ObjectStore, where: str, target: Path) -> ExportResult:
    """Export the records matching ``where`` (and their images) to ``target``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    as_zip = _check_target(target)
    table = _select(settings, store, where)
    if table.num_rows == 0:
        raise ExportError("no records match the --where condition; nothing exported")
    table = _with_public_urls(table, settings.public_base_url)
    rows = table.select(["status", "image_key", "sha256"]).to_pylist()
    files: dict[str, str] = {}  # image key -> path in the export
    expected: dict[str, str] = {}
    for row in rows:
        if row["status"] == "stored" and row["image_key"]:
            files.setdefault(row["image_key"], f"images/{PurePosixPath(row['image_key']).name}")
            expected.setdefault(row["image_key"], row["sha256"] or "")
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    if not as_zip:
        tmp.unlink()
        tmp.mkdir()
    result = ExportResult(target, table.num_rows, 0, 0)
    writer = _Writer(tmp, as_zip)
    try:
        for key, data in _fetch(store, list(expected.items())):
            if isinstance(data, str):
                result.problems.append(data)
                files.pop(key)
                continue
            writer.write(files[key], data, compress=False)
            result.images += 1
        paths = [files.get(row["image_key"]) if row["image_key"] else None for row in rows]
        table = table.append_column("export_path", pa.array(paths, pa.string()))
        parquet = io.BytesIO()
        pq.write_table(table, parquet, compression="zstd")
        writer.write("metadata.parquet", parquet.getvalue(), compress=False)
        writer.write("metadata.csv", _csv_bytes(table))
        manifest = {
            "where": where,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "storage_root": store.root,
            "records": result.records,
            "images": result.images,
            "problems": result.problems,
        }
        writer.write("export.json", json.dumps(manifest, indent=2).encode("utf-8"))
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        writer.close()
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    result.bytes_written = writer.bytes
    return result

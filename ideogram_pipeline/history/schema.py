"""The history's columns and keys, in one place: what a record is and what makes it unique.

:class:`GenerationRecord` IS the column list: each field is a column, and its Arrow type
sits beside it, so :data:`TABLE_SCHEMA` and :data:`METADATA_SCHEMA` are derived from the
record and cannot drift from it. A misspelt field fails where the record is built (a
dataclass refuses unknown keyword arguments), not later as a silent null column.

Both tables (``tables.py``) carry the same columns. ``generations`` keeps one row per
:data:`ROW_KEY`, so the key is defined here once. A row is known by its content, not its
line (issue 17): ``row_key`` hashes the request and its occurrence among identical rows
(``row_keys.py``), so inserting, deleting or reordering rows of a file keeps every other
row's records; ``in_file`` says whether the batch's latest file still holds the row.

:class:`RowState` is the other direction: what a re-run reads back about one CSV row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa

from ideogram_pipeline.ideogram.generation import STATUSES, Status

__all__ = [
    "COLUMN_NAMES",
    "EVENTS",
    "LEGACY_ROW_KEY",
    "METADATA_SCHEMA",
    "PARTITION_COLUMNS",
    "ROW_KEY",
    "TABLE_SCHEMA",
    "GenerationRecord",
    "RowState",
    "line_key",
    "records_table",
]

#: Hive partitioning of the data files, outermost first: ``date=YYYY-MM-DD/batch=KEY/``.
PARTITION_COLUMNS = ("date", "batch")

#: What ``generations`` holds exactly one row of: a row's content (its ``row_key``), not
#: its line, so a row that moves keeps its record and a changed row is a new one.
ROW_KEY = ("batch", "row_key", "image_index")
#: The key of releases before issue 17 (the line number): the old layout's views and the
#: import of such a history (``legacy.py``, ``migrate.py``) still match by it.
LEGACY_ROW_KEY = ("batch", "row", "image_index")

#: Why a record was appended to ``generation_records``: a generation outcome, a change a
#: person made afterwards, a description set in place after a ``describe``, or the orphan
#: sweep marking a missing image (the record then holds the row as it was after the change).
EVENTS = ("generate", "tag", "pin", "unpin", "describe", "sweep")

_UTC_MICROS = pa.timestamp("us", tz="UTC")


def _arrow(arrow_type: pa.DataType) -> dict[str, pa.DataType]:
    """A field's metadata: the Arrow type of its table column."""
    return {"arrow": arrow_type}


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationRecord:
    """One row of the history: an image's outcome (or a rejected or failed CSV row's).

    Field order is column order; the partition columns ``date`` and ``batch`` come last.
    """

    id: str = field(metadata=_arrow(pa.string()))
    row: int = field(metadata=_arrow(pa.int32()))
    image_index: int = field(metadata=_arrow(pa.int32()))
    prompt: str | None = field(default=None, metadata=_arrow(pa.string()))
    expanded_prompt: str | None = field(default=None, metadata=_arrow(pa.string()))
    negative_prompt: str | None = field(default=None, metadata=_arrow(pa.string()))
    model: str | None = field(default=None, metadata=_arrow(pa.string()))
    style_type: str | None = field(default=None, metadata=_arrow(pa.string()))
    aspect_ratio: str | None = field(default=None, metadata=_arrow(pa.string()))
    resolution: str | None = field(default=None, metadata=_arrow(pa.string()))
    rendering_speed: str | None = field(default=None, metadata=_arrow(pa.string()))
    magic_prompt: str | None = field(default=None, metadata=_arrow(pa.string()))
    seed: int | None = field(default=None, metadata=_arrow(pa.int64()))
    requested_seed: int | None = field(default=None, metadata=_arrow(pa.int64()))
    num_images: int | None = field(default=None, metadata=_arrow(pa.int32()))
    is_safe: bool | None = field(default=None, metadata=_arrow(pa.bool_()))
    status: Status = field(metadata=_arrow(pa.string()))
    error: str | None = field(default=None, metadata=_arrow(pa.string()))
    original_url: str | None = field(default=None, metadata=_arrow(pa.string()))
    stored_uri: str | None = field(default=None, metadata=_arrow(pa.string()))
    image_key: str | None = field(default=None, metadata=_arrow(pa.string()))
    sha256: str | None = field(default=None, metadata=_arrow(pa.string()))
    size_bytes: int | None = field(default=None, metadata=_arrow(pa.int64()))
    created_at: dt.datetime = field(metadata=_arrow(_UTC_MICROS))
    cost_usd: float | None = field(default=None, metadata=_arrow(pa.float64()))
    tags: tuple[str, ...] = field(default=(), metadata=_arrow(pa.list_(pa.string())))
    run_id: str | None = field(default=None, metadata=_arrow(pa.string()))
    run_started_at: dt.datetime | None = field(default=None, metadata=_arrow(_UTC_MICROS))
    request_hash: str | None = field(default=None, metadata=_arrow(pa.string()))
    attempts: int | None = field(default=None, metadata=_arrow(pa.int32()))
    #: The ledger attempt this record belongs to.
    attempt_id: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: The last error retried on the way (None: first try).
    last_error: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Failed records: safety, generation, expired, download, storage; unknown: answer_lost.
    failure_kind: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Ideogram's id, when the API gave one.
    generation_id: str | None = field(default=None, metadata=_arrow(pa.string()))
    latency_ms: float | None = field(default=None, metadata=_arrow(pa.float64()))
    batch_name: str | None = field(default=None, metadata=_arrow(pa.string()))
    source_file: str | None = field(default=None, metadata=_arrow(pa.string()))
    simulated: bool | None = field(default=None, metadata=_arrow(pa.bool_()))
    #: Id of the record this one regenerated.
    reproduced_from: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Id of the stored record this request reused.
    duplicate_of: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: The bytes as downloaded, before text chunks.
    download_sha256: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Perceptual hash, 16 hex digits.
    phash: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Retention never deletes a pinned record.
    pinned: bool = field(default=False, metadata=_arrow(pa.bool_()))
    #: One of :data:`EVENTS`.
    event: str = field(default="generate", metadata=_arrow(pa.string()))
    #: When this version was written (None: filled in by the writer).
    recorded_at: dt.datetime | None = field(default=None, metadata=_arrow(_UTC_MICROS))
    # Issue 18's generation controls, as the request carried them (canonical forms). All
    # nullable: a table written before them gains them at its end (``HistoryTables``
    # evolves it; columns are matched by name) and its old rows read as unset.
    style_preset: str | None = field(default=None, metadata=_arrow(pa.string()))
    style_codes: tuple[str, ...] | None = field(
        default=None, metadata=_arrow(pa.list_(pa.string()))
    )
    color_palette: str | None = field(default=None, metadata=_arrow(pa.string()))
    transparent: bool | None = field(default=None, metadata=_arrow(pa.bool_()))
    quality: str | None = field(default=None, metadata=_arrow(pa.string()))
    size: str | None = field(default=None, metadata=_arrow(pa.string()))
    enable_copyright_detection: bool | None = field(default=None, metadata=_arrow(pa.bool_()))
    #: The request's reference images: SHA-256s of bytes stored under ``references/``, and
    #: each one's role (style, character, character_mask), position by position.
    reference_sha256s: tuple[str, ...] | None = field(
        default=None, metadata=_arrow(pa.list_(pa.string()))
    )
    reference_roles: tuple[str, ...] | None = field(
        default=None, metadata=_arrow(pa.list_(pa.string()))
    )
    #: The row's identity in its batch: its request (or rejection) and its occurrence among
    #: identical rows of the file (``row_keys.py``). None: written by an earlier release and
    #: not yet keyed by ``migrate``.
    row_key: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Whether the batch's latest file holds this row. ``generations`` (the view) shows only
    #: these; rows that left the file keep their paid images in ``generations_all``.
    in_file: bool | None = field(default=None, metadata=_arrow(pa.bool_()))
    # Issue 19: work on stored images. Nullable like issue 18's columns, so older tables
    # gain them on their next write and their rows read as unset (generation, no lineage).
    #: What made this record: ``generate`` or an operation on a stored image (``upscale``,
    #: ``describe``, ``remix``, ``reframe``, ``replace_background``, ``remove_background``).
    operation: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Id of the record whose image this one was made from (its source).
    derived_from: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Ideogram's description of the image (``describe``), updated in place on the source.
    description: str | None = field(default=None, metadata=_arrow(pa.string()))
    #: Where the stored image can be fetched by anyone: ``IDEOGRAM_PUBLIC_BASE_URL`` + its
    #: key (None: no public base configured, nothing public implied).
    public_url: str | None = field(default=None, metadata=_arrow(pa.string()))
    date: dt.date = field(metadata=_arrow(pa.date32()))
    batch: str = field(metadata=_arrow(pa.string()))

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"record {self.id}: unknown status {self.status!r}")
        if self.event not in EVENTS:
            raise ValueError(f"record {self.id}: unknown event {self.event!r}")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> GenerationRecord:
        """A record from a mapping of column names (a test's or a script's rows); ``date``
        may be ISO text and ``tags`` any sequence. An unknown name raises ``TypeError``."""
        values = dict(row)
        if isinstance(values.get("date"), str):
            values["date"] = dt.date.fromisoformat(values["date"])
        if values.get("tags") is not None:
            values["tags"] = tuple(values["tags"])
        for name in ("style_codes", "reference_sha256s", "reference_roles"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def as_row(self) -> dict[str, Any]:
        """The record as ``{column: value}`` (for code that reads rows by name)."""
        return {name: getattr(self, name) for name in COLUMN_NAMES}


#: Every column, in table order (the record's fields).
COLUMN_NAMES: tuple[str, ...] = tuple(f.name for f in fields(GenerationRecord))

#: The tables' schema: the record's columns, with the partition columns last.
TABLE_SCHEMA = pa.schema([pa.field(f.name, f.metadata["arrow"]) for f in fields(GenerationRecord)])

#: The record's columns without the partition columns (what a data file row holds).
METADATA_SCHEMA = pa.schema([f for f in TABLE_SCHEMA if f.name not in PARTITION_COLUMNS])


def line_key(row: int) -> str:
    """The row key of a record written without one: its line (as before issue 17)."""
    return f"line:{row}"


def records_table(records: Iterable[GenerationRecord], recorded_at: dt.datetime) -> pa.Table:
    """``records`` as a table of exactly :data:`TABLE_SCHEMA`, column by column;
    ``recorded_at`` fills the records that carry none."""
    rows = list(records)
    columns = {name: [getattr(r, name) for r in rows] for name in COLUMN_NAMES}
    columns["recorded_at"] = [at or recorded_at for at in columns["recorded_at"]]
    return pa.Table.from_pydict(columns, schema=TABLE_SCHEMA)


@dataclass(frozen=True)
class RowState:
    """What the history holds for one CSV row of a batch, as a re-run needs it.

    ``indexes`` are the image indexes already finished (an image whose storage failed is
    still to be finished from the ledger, so it is not among them).
    """

    request_hash: str | None
    statuses: frozenset[str]
    error: str | None
    attempt_id: str | None
    indexes: frozenset[int] = frozenset()
    #: The row's records came from a simulator: never done for a run against the real API.
    simulated: bool = False

"""Tags changed after the fact: an append-only log merged into the history at query time.

Metadata Parquet files are immutable (written once, never edited), so ``tag ID --add T``
does not rewrite them. Each change writes one small Parquet file under
``metadata/tag_changes/YYYY/MM/`` through the object store (atomic, durable, works on local
and S3 roots alike), with one row per (record, tag, action). The history views
(``history.py``) merge the log: a record's ``tags`` are its base tags (from its CSV row)
plus adds minus removes, the latest change per tag winning (ordered by ``changed_at``,
then the change id, then the order within the change). So ``generations.tags`` is the one
source for search, export and retention (a ``keep`` tag added later protects a record).

The raw log is queryable as the ``tag_changes`` view.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from ideogram_pipeline.storage.base import ObjectStore

__all__ = [
    "TAG_CHANGES_PREFIX",
    "TAG_CHANGE_SCHEMA",
    "TagChange",
    "TagError",
    "merged_tags_sql",
    "tag_changes_view_sql",
    "tag_log_sql",
    "validate_tag",
    "write_tag_changes",
]

TAG_CHANGES_PREFIX = "metadata/tag_changes"
MAX_TAG_LENGTH = 64

TAG_CHANGE_SCHEMA = pa.schema(
    [
        ("change_id", pa.string()),
        ("seq", pa.int32()),
        ("record_id", pa.string()),
        ("tag", pa.string()),
        ("action", pa.string()),  # "add" or "remove"
        ("changed_at", pa.timestamp("us", tz="UTC")),
    ]
)


class TagError(ValueError):
    """A tag or a tag change is not acceptable; the message says which and why."""


@dataclass(frozen=True)
class TagChange:
    """One ``tag`` command: its id, the log object written and what it did."""

    change_id: str
    key: str
    records: int
    added: tuple[str, ...]
    removed: tuple[str, ...]


def validate_tag(tag: str) -> str:
    """A clean tag: trimmed, 1..64 characters, no ``|`` (the CSV separator), no controls."""
    value = tag.strip()
    if not value:
        raise TagError("a tag cannot be empty")
    if len(value) > MAX_TAG_LENGTH:
        raise TagError(f"tag {value[:20]!r}... is longer than {MAX_TAG_LENGTH} characters")
    if "|" in value or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise TagError(f"tag {value!r} may not contain '|' or control characters")
    return value


def write_tag_changes(
    store: ObjectStore,
    record_ids: Sequence[str],
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
    now: datetime | None = None,
) -> TagChange:
    """Append one change (removes, then adds, for every record) to the log.

    ``record_ids`` must be full ids that exist (see :func:`ideogram_pipeline.search.resolve_ids`).
    """
    added = tuple(dict.fromkeys(validate_tag(tag) for tag in add))
    removed = tuple(dict.fromkeys(validate_tag(tag) for tag in remove))
    if not added and not removed:
        raise TagError("nothing to change: give --add and/or --remove")
    both = sorted(set(added) & set(removed))
    if both:
        raise TagError(f"tag {both[0]!r} is both added and removed")
    if not record_ids:
        raise TagError("no record ids given")
    when = now or datetime.now(UTC)
    change_id = f"{when:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
    rows = [
        (record_id, tag, action)
        for record_id in record_ids
        for action, tags in (("remove", removed), ("add", added))
        for tag in tags
    ]
    table = pa.Table.from_pylist(
        [
            {
                "change_id": change_id,
                "seq": seq,
                "record_id": record_id,
                "tag": tag,
                "action": action,
                "changed_at": when,
            }
            for seq, (record_id, tag, action) in enumerate(rows)
        ],
        schema=TAG_CHANGE_SCHEMA,
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    key = f"{TAG_CHANGES_PREFIX}/{when:%Y/%m}/{change_id}.parquet"
    store.put_bytes(
        key, buffer.getvalue(), content_type="application/vnd.apache.parquet", create_only=True
    )
    return TagChange(change_id, key, len(record_ids), added, removed)


def _has_log(store: ObjectStore) -> bool:
    return any(info.key.endswith(".parquet") for info in store.list(TAG_CHANGES_PREFIX + "/"))


def _empty_log_sql() -> str:
    columns = ", ".join(
        f"CAST(NULL AS {kind}) AS {name}"
        for name, kind in (
            ("change_id", "VARCHAR"),
            ("seq", "INTEGER"),
            ("record_id", "VARCHAR"),
            ("tag", "VARCHAR"),
            ("action", "VARCHAR"),
            ("changed_at", "TIMESTAMPTZ"),
        )
    )
    return f"SELECT * FROM (SELECT {columns}) WHERE false"


def tag_log_sql(store: ObjectStore, records_sql: str) -> tuple[str, str]:
    """``(statements, query)``: the ``tag_changes`` view, and ``records_sql`` with merged tags.

    ``records_sql`` is a SELECT with an ``id`` and a ``tags`` column; with no log yet it is
    returned unchanged (no join), and ``tag_changes`` is an empty view.
    """
    statements, has_log = tag_changes_view_sql(store)
    return statements, merged_tags_sql(records_sql) if has_log else records_sql


def tag_changes_view_sql(store: ObjectStore) -> tuple[str, bool]:
    """``(statement, has_log)``: the ``tag_changes`` view (empty while there is no log)."""
    if not _has_log(store):
        return f"CREATE OR REPLACE VIEW tag_changes AS {_empty_log_sql()};\n", False
    glob = store.uri(f"{TAG_CHANGES_PREFIX}/**/*.parquet").replace("'", "''")
    statement = (
        "CREATE OR REPLACE VIEW tag_changes AS SELECT * FROM read_parquet("
        f"'{glob}', union_by_name = true);\n"
    )
    return statement, True


def merged_tags_sql(records_sql: str) -> str:
    """``records_sql`` (with ``id`` and ``tags``) with the ``tag_changes`` log merged in."""
    empty = "[]::VARCHAR[]"
    return (
        f"WITH base_records AS ({records_sql}), "
        "tag_state AS (SELECT record_id, tag, "
        "arg_max(action, (changed_at, change_id, seq)) AS action, "
        "max((changed_at, change_id, seq)) AS last_change "
        "FROM tag_changes GROUP BY record_id, tag), "
        "tag_lists AS (SELECT record_id, "
        "list(tag ORDER BY last_change) FILTER (WHERE action = 'add') AS added, "
        "list(tag) FILTER (WHERE action = 'remove') AS removed "
        "FROM tag_state GROUP BY record_id) "
        "SELECT base_records.* REPLACE (CASE WHEN tag_lists.record_id IS NULL "
        "THEN base_records.tags ELSE list_concat("
        f"list_filter(coalesce(base_records.tags, {empty}), "
        f"lambda t: NOT list_contains(coalesce(tag_lists.removed, {empty}), t)), "
        f"list_filter(coalesce(tag_lists.added, {empty}), "
        f"lambda t: NOT list_contains(coalesce(base_records.tags, {empty}), t))) END AS tags) "
        "FROM base_records LEFT JOIN tag_lists ON tag_lists.record_id = base_records.id"
    )

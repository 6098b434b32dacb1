"""The history's columns and keys, in one place: what a record is and what makes it unique.

Both tables (``tables.py``) carry the same columns. ``generations`` keeps one row per
:data:`ROW_KEY`, so the key is defined here once: the batch-file issue will make a row's
identity its content instead of its line number, and only this constant changes.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "EVENTS",
    "METADATA_SCHEMA",
    "PARTITION_COLUMNS",
    "ROW_KEY",
    "TABLE_SCHEMA",
]

#: Hive partitioning of the data files, outermost first: ``date=YYYY-MM-DD/batch=KEY/``.
PARTITION_COLUMNS = ("date", "batch")

#: What ``generations`` holds exactly one row of.
ROW_KEY = ("batch", "row", "image_index")

#: Why a record was appended to ``generation_records``: a generation outcome, a change a
#: person made afterwards, or the orphan sweep marking a missing image (the record then
#: holds the row as it was after the change).
EVENTS = ("generate", "tag", "pin", "unpin", "sweep")

METADATA_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("row", pa.int32()),
        ("image_index", pa.int32()),
        ("prompt", pa.string()),
        ("expanded_prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("model", pa.string()),
        ("style_type", pa.string()),
        ("aspect_ratio", pa.string()),
        ("resolution", pa.string()),
        ("rendering_speed", pa.string()),
        ("magic_prompt", pa.string()),
        ("seed", pa.int64()),
        ("requested_seed", pa.int64()),
        ("num_images", pa.int32()),
        ("is_safe", pa.bool_()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("original_url", pa.string()),
        ("stored_uri", pa.string()),
        ("image_key", pa.string()),
        ("sha256", pa.string()),
        ("size_bytes", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("cost_usd", pa.float64()),
        ("tags", pa.list_(pa.string())),
        ("run_id", pa.string()),
        ("run_started_at", pa.timestamp("us", tz="UTC")),
        ("request_hash", pa.string()),
        ("attempts", pa.int32()),
        ("attempt_id", pa.string()),  # the ledger attempt this record belongs to
        ("last_error", pa.string()),  # the last error retried on the way (None: first try)
        ("failure_kind", pa.string()),  # failed records: safety, generation, expired, ...
        ("generation_id", pa.string()),  # Ideogram's id, when the API gave one
        ("latency_ms", pa.float64()),
        ("batch_name", pa.string()),
        ("source_file", pa.string()),
        ("simulated", pa.bool_()),
        ("reproduced_from", pa.string()),  # id of the record this one regenerated
        ("duplicate_of", pa.string()),  # id of the stored record this request reused
        ("download_sha256", pa.string()),  # bytes as downloaded, before text chunks
        ("phash", pa.string()),  # perceptual hash, 16 hex digits
        ("pinned", pa.bool_()),  # retention never deletes a pinned record
        ("event", pa.string()),  # one of EVENTS
        ("recorded_at", pa.timestamp("us", tz="UTC")),  # when this version was written
    ]
)

#: The tables' schema: the record's columns, then the partition columns.
TABLE_SCHEMA = METADATA_SCHEMA.append(pa.field("date", pa.date32())).append(
    pa.field("batch", pa.string())
)

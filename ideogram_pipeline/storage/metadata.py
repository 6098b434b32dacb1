"""The metadata table: its Arrow schema and the writer of Hive-partitioned Parquet files.

Layout: ``metadata/generations/date=YYYY-MM-DD/batch=KEY/<run>-<n>.parquet``. Files are
written whole through the store (temp-and-rename locally, one PUT on S3), so a reader never
sees half a file, and never rewritten, so a crash loses at most the rows not yet flushed.
``date`` and ``batch`` live only in the path, as Hive partitioning expects.
"""

from __future__ import annotations

import io
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ideogram_pipeline.keys import is_safe_key
from ideogram_pipeline.storage.base import ObjectStore

__all__ = ["GENERATIONS_PREFIX", "METADATA_SCHEMA", "MetadataWriter", "partition_prefix"]

GENERATIONS_PREFIX = "metadata/generations"

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
        # History features (issue 6): links between records and image fingerprints.
        ("reproduced_from", pa.string()),  # id of the record this one regenerated
        ("duplicate_of", pa.string()),  # id of the stored record this request reused
        ("download_sha256", pa.string()),  # bytes as downloaded, before text chunks
        ("phash", pa.string()),  # perceptual hash, 16 hex digits
    ]
)


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def partition_prefix(day: str, batch: str) -> str:
    # The last line of defence: a batch key reaches a path only once it is escaped (keys.py).
    if not is_safe_key(batch) or not _DAY.fullmatch(day):
        raise ValueError(f"unsafe partition date={day!r} batch={batch!r}: see keys.batch_key_for")
    return f"{GENERATIONS_PREFIX}/date={day}/batch={batch}"


class MetadataWriter:
    """Append-only writer: each :meth:`write` call adds new files, never edits old ones."""

    def __init__(self, store: ObjectStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.keys: list[str] = []

    def write(self, batch: str, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Write ``records`` (dicts keyed by column, plus ``date``) and return the new keys."""
        by_day: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for record in records:
            by_day[record["date"]].append(record)
        written = []
        for day, rows in sorted(by_day.items()):
            table = pa.Table.from_pylist(
                [{name: row.get(name) for name in METADATA_SCHEMA.names} for row in rows],
                schema=METADATA_SCHEMA,
            )
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            key = f"{partition_prefix(day, batch)}/{self.run_id}-{uuid.uuid4().hex[:8]}.parquet"
            self.store.put_bytes(
                key, buffer.getvalue(), content_type="application/vnd.apache.parquet"
            )
            written.append(key)
        self.keys.extend(written)
        return written

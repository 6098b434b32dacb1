"""Where the history tables live under a storage root (no heavy imports: ``query`` reads this).

``<root>/history/generations``, ``<root>/history/generation_records`` and
``<root>/history/usage_rollup``: each a Delta table, a folder of Hive-partitioned Parquet
(``date=YYYY-MM-DD/batch=KEY/``) plus its ``_delta_log``.
"""

from __future__ import annotations

from pathlib import Path

from ideogram_pipeline.settings import Settings

__all__ = ["GENERATIONS", "GENERATIONS_ALL", "RECORDS", "TABLES_PREFIX", "USAGE", "table_uri"]

TABLES_PREFIX = "history"
GENERATIONS = "generations"
RECORDS = "generation_records"
#: Not a table: the view of every current row of ``generations``, including rows that left
#: their batch's latest file (``in_file`` false); ``generations`` shows the file's rows.
GENERATIONS_ALL = "generations_all"
USAGE = "usage_rollup"


def table_uri(settings: Settings, name: str) -> str:
    """Where table ``name`` lives: ``<root>/history/<name>`` (an absolute path or ``s3://``)."""
    root = settings.storage.rstrip("/")
    if settings.is_s3:
        return f"{root}/{TABLES_PREFIX}/{name}"
    return str(Path(root).expanduser().resolve() / TABLES_PREFIX / name)

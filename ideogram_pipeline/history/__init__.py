"""The generation history: Delta tables under the storage root, read through DuckDB.

``tables.py`` writes them (MERGE, UPDATE, DELETE, compaction), ``views.py`` reads them,
``schema.py`` says what a record is, ``tags.py`` and ``pins.py`` change records in place,
and ``migrate.py`` brings a history of an earlier release into the tables.
"""

from ideogram_pipeline.history.views import (
    VIEWS,
    HistoryNeedsMigration,
    batch_state,
    connect,
    plain_sql,
)

__all__ = ["VIEWS", "HistoryNeedsMigration", "batch_state", "connect", "plain_sql"]

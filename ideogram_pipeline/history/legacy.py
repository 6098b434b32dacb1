"""The history as releases before the Delta tables wrote it (up to 2314ac4).

Those releases kept the history as append-only Parquet and worked out its meaning at every
read. This module is the one place that still knows that layout and those read-time rules,
so that ``migrate`` can work the meaning out once, the same way, and store the answer:

- ``metadata/generations/date=D/batch=B/*.parquet``: every record file. The old
  ``generation_records`` view kept one row per (date, batch, id), the newest by
  ``created_at`` (compaction and cleanup briefly left a row in two files).
- The old ``generations`` view kept, per (batch, row), the records of the latest
  ``attempt_id``, then the newest record per id; the tables hold one of those per
  :data:`~ideogram_pipeline.history.schema.LEGACY_ROW_KEY` (newest first). A row without any
  ``attempt_id`` (a file written by another tool) keeps its newest record per image index.
- ``metadata/tag_changes/YYYY/MM/*.parquet``: the tag log, merged into ``tags`` as the old
  views did (base tags minus removes plus adds, the latest change per tag winning).
- ``metadata/pins/*.jsonl``: the pin log; a record is ``pinned`` when its latest event is
  a pin.
- ``metadata/usage_rollup/date=D/batch=B/*.parquet``: what retention kept of deleted
  records, one row per (date, batch, id).
- ``metadata/lifecycle/``: the old cleanup manifests and lock, only ever deleted.

Files may lack any column beyond the few a row cannot be placed without
(:data:`REQUIRED_COLUMNS`): missing ones are NULL, unknown ones are ignored, and types are
cast to the tables' schema, because other tools and older releases wrote these files too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from ideogram_pipeline.history.schema import LEGACY_ROW_KEY, TABLE_SCHEMA
from ideogram_pipeline.history.tables import USAGE_SCHEMA
from ideogram_pipeline.history.views import LEGACY_PREFIX, duckdb_type
from ideogram_pipeline.safe_output import sql_list
from ideogram_pipeline.storage import ObjectStore
from ideogram_pipeline.storage.base import ObjectInfo, StorageError

__all__ = [
    "LEGACY_PREFIXES",
    "RECORD_KEYS",
    "REQUIRED_COLUMNS",
    "STATE_KEYS",
    "USAGE_ROWS",
    "LegacyFiles",
    "LegacyReader",
    "MigrationError",
    "duckdb_types",
    "list_legacy",
    "quoted",
    "remove_legacy",
    "typed_select",
]

RECORDS_PREFIX = LEGACY_PREFIX
TAG_LOG_PREFIX = "metadata/tag_changes"
PINS_PREFIX = "metadata/pins"
USAGE_PREFIX = "metadata/usage_rollup"
LIFECYCLE_PREFIX = "metadata/lifecycle"
#: Everything the old layout is: ``remove_legacy`` deletes these once they are imported.
LEGACY_PREFIXES = (RECORDS_PREFIX, TAG_LOG_PREFIX, PINS_PREFIX, USAGE_PREFIX, LIFECYCLE_PREFIX)
#: Without these a record cannot be placed in a table (the rest may be missing).
REQUIRED_COLUMNS = ("id", "row", "image_index", "created_at")
#: The temp tables :meth:`LegacyReader.load` leaves: the old ``generation_records`` rows,
#: the old ``generations`` rows (as keys locating each in its file) and the roll-up rows.
RECORD_KEYS = "_rec_keys"
STATE_KEYS = "_state_keys"
USAGE_ROWS = "_usage"
_HIVE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/batch=([^/]+)/[^/]+\.parquet")
_HIVE_TYPES = "{'date': DATE, 'batch': VARCHAR}"
#: What locating, choosing and verifying a record needs (read before whole rows are).
_KEY_COLUMNS = ("date", "batch", "id", "row", "image_index", "attempt_id", "created_at", "cost_usd")
#: Added by the tables, never read from old files.
_NEW_COLUMNS = ("pinned", "event", "recorded_at")


class MigrationError(StorageError):
    """The old history cannot be imported, or what was imported does not match it.

    Defined here, below ``migrate``, because most of these errors are old files that
    cannot be read as the old release read them.
    """


# -- the files ----------------------------------------------------------------------------


@dataclass
class LegacyFiles:
    """The old layout's objects under a root, grouped as the migration reads them."""

    records: dict[str, list[ObjectInfo]] = field(default_factory=dict)
    usage: dict[str, list[ObjectInfo]] = field(default_factory=dict)
    tag_log: list[ObjectInfo] = field(default_factory=list)
    pins: list[ObjectInfo] = field(default_factory=list)
    other: list[ObjectInfo] = field(default_factory=list)  # lifecycle leftovers, strays
    pending_cleanups: list[str] = field(default_factory=list)

    @property
    def batches(self) -> list[str]:
        return sorted(set(self.records) | set(self.usage))

    @property
    def empty(self) -> bool:
        return not (self.records or self.usage or self.tag_log or self.pins or self.other)

    def all_keys(self) -> list[str]:
        groups = [*self.records.values(), *self.usage.values(), self.tag_log, self.pins]
        return [info.key for group in [*groups, self.other] for info in group]

    def fingerprint(self, batch: str) -> str:
        """What a batch's old files are (keys and sizes): a marker holds it."""
        digest = hashlib.sha256()
        for info in sorted(self.records.get(batch, []) + self.usage.get(batch, []), key=_key):
            digest.update(f"{info.key}\0{info.size}\n".encode())
        return digest.hexdigest()

    def size(self, batch: str) -> int:
        return sum(info.size for info in self.records.get(batch, []) + self.usage.get(batch, []))


def _key(info: ObjectInfo) -> str:
    return info.key


def list_legacy(store: ObjectStore) -> LegacyFiles:
    """List the old layout once (one listing per prefix) and sort the objects by role."""
    found = LegacyFiles()
    for prefix, target in ((RECORDS_PREFIX, found.records), (USAGE_PREFIX, found.usage)):
        for info in store.list(prefix + "/"):
            match = _HIVE.fullmatch(info.key[len(prefix) + 1 :])
            if match:
                target.setdefault(match.group(2), []).append(info)
            elif info.key.endswith(".parquet"):
                raise MigrationError(
                    f"{store.uri(info.key)} is not in a date=YYYY-MM-DD/batch=KEY/ folder: "
                    "move it into one (or away) and run migrate again"
                )
            else:
                found.other.append(info)
    for info in store.list(TAG_LOG_PREFIX + "/"):
        (found.tag_log if info.key.endswith(".parquet") else found.other).append(info)
    for info in store.list(PINS_PREFIX + "/"):
        (found.pins if info.key.endswith(".jsonl") else found.other).append(info)
    manifests: set[str] = set()
    done: set[str] = set()
    for info in store.list(LIFECYCLE_PREFIX + "/"):
        found.other.append(info)
        parts = info.key[len(LIFECYCLE_PREFIX) + 1 :].split("/")
        if len(parts) == 3 and parts[0] == "cleanup":
            (manifests if parts[2] == "manifest.json" else done).add(parts[1])
    found.pending_cleanups = sorted(manifests - done)
    return found


def remove_legacy(store: ObjectStore, legacy: LegacyFiles) -> int:
    """Delete the listed old-layout objects (called once every batch is verified).

    Objects that appeared after the listing stay: they were not imported.
    """
    keys = legacy.all_keys()
    store.delete(keys)  # the store batches (S3: 1,000 keys per DeleteObjects)
    from ideogram_pipeline.storage.local import LocalStore

    if isinstance(store, LocalStore):
        for prefix in LEGACY_PREFIXES:
            _prune_empty(store.path / prefix)
    return len(keys)


def _prune_empty(folder: Path) -> None:
    """Remove empty folders under (and including) ``folder``, deepest first."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


# -- SQL over the old files ---------------------------------------------------------------


def duckdb_types(schema: pa.Schema) -> dict[str, str]:
    """Each column of ``schema`` with its DuckDB type, in order."""
    return {f.name: duckdb_type(f.type) for f in schema}


def quoted(name: str) -> str:
    """``name`` as a DuckDB identifier (``row`` is a keyword, and old files name columns)."""
    return '"' + name.replace('"', '""') + '"'


def typed_select(present: Iterable[str], types: dict[str, str], skip: Sequence[str] = ()) -> str:
    """A select list of every column in ``types`` but ``skip``: cast when ``present``, else
    a typed NULL, so that files of any age read as the tables' schema."""
    have = set(present)
    parts = []
    for name, kind in types.items():
        if name in skip:
            continue
        source = f"CAST({quoted(name)} AS {kind})" if name in have else f"CAST(NULL AS {kind})"
        parts.append(f"{source} AS {quoted(name)}")
    return ", ".join(parts)


def _read_sql(uris: Sequence[str]) -> str:
    return (
        f"read_parquet({sql_list(uris)}, hive_partitioning = true, union_by_name = true, "
        f"hive_types = {_HIVE_TYPES}, filename = true, file_row_number = true)"
    )


def _columns(con: duckdb.DuckDBPyConnection, source: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]


class LegacyReader:
    """The old views' answer for a few batches at a time, as temp tables in ``con``.

    The caller owns the connection (configured for the root's storage) so that it can
    compare this answer with the tables in the same queries. The tag and pin logs cover
    every batch and are read once, when the reader is made.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, store: ObjectStore, legacy: LegacyFiles
    ) -> None:
        self.con = con
        self.store = store
        self.legacy = legacy
        self.record_types = duckdb_types(TABLE_SCHEMA)
        self.usage_types = duckdb_types(USAGE_SCHEMA)
        self.uris: list[str] = []
        self._load_tag_log()
        self._load_pins()

    # ---- logs ----

    def _load_tag_log(self) -> None:
        """``_tag_lists(record_id, added, removed)``: the tag log's net effect per record."""
        empty = (
            "SELECT NULL::VARCHAR AS record_id, []::VARCHAR[] AS added, []::VARCHAR[] AS removed"
        )
        if not self.legacy.tag_log:
            self.con.execute(f"CREATE TEMP TABLE _tag_lists AS {empty} WHERE false")
            return
        uris = [self.store.uri(info.key) for info in self.legacy.tag_log]
        try:
            self._tag_lists(uris)
        except duckdb.Error as exc:
            raise MigrationError(f"cannot read the old tag log: {exc}") from None

    def _tag_lists(self, uris: Sequence[str]) -> None:
        self.con.execute(
            "CREATE TEMP TABLE _tag_lists AS WITH log AS (SELECT * FROM read_parquet("
            f"{sql_list(uris)}, union_by_name = true)), "
            "state AS (SELECT record_id, tag, "
            "arg_max(action, (changed_at, change_id, seq)) AS action, "
            "max((changed_at, change_id, seq)) AS last_change FROM log GROUP BY record_id, tag) "
            "SELECT record_id, "
            "coalesce(list(tag ORDER BY last_change) FILTER (WHERE action = 'add'), []) AS added, "
            "coalesce(list(tag) FILTER (WHERE action = 'remove'), []) AS removed "
            "FROM state GROUP BY record_id"
        )

    def _load_pins(self) -> None:
        """``_pins(id, pinned)``: each id's latest pin event (events counted once by id)."""
        events: dict[str, tuple[str, str, str]] = {}
        for info in self.legacy.pins:
            for number, line in enumerate(self.store.get_bytes(info.key).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    event = (str(item["at"]), str(item["id"]), str(item["action"]))
                    events.setdefault(str(item["event"]), event)
                except (ValueError, KeyError, TypeError) as exc:
                    raise MigrationError(
                        f"pin log {self.store.uri(info.key)} line {number} is not a pin event "
                        f"({exc}); nothing was imported"
                    ) from None
        state: dict[str, bool] = {}
        for _event, (_at, record_id, action) in sorted(
            events.items(), key=lambda kv: (kv[1][0], kv[0])
        ):
            state[record_id] = action == "pin"
        self.con.register(
            "_pins",
            pa.table(
                {
                    "id": pa.array(list(state), pa.string()),
                    "pinned": pa.array(list(state.values()), pa.bool_()),
                }
            ),
        )

    # ---- one chunk of batches ----

    def load(self, batches: Sequence[str]) -> None:
        """What the old views made of ``batches``, as narrow key tables: :data:`RECORD_KEYS`
        (one per record of ``generation_records``), :data:`STATE_KEYS` (the ``generations``
        rows) and :data:`USAGE_ROWS` (roll-up rows, whole: they are few and narrow).

        Keys locate each row in its file (``filename``, ``file_row_number``); whole rows
        are read only for what a table lacks (:meth:`rows_at`). Window functions over a
        few key columns cost a fraction of what they do over whole rows.
        """
        for name in ("_keys", RECORD_KEYS, STATE_KEYS, USAGE_ROWS):
            self.con.execute(f"DROP TABLE IF EXISTS {name}")
        files = [info for b in batches for info in self.legacy.records.get(b, [])]
        self.uris = [self.store.uri(info.key) for info in files]
        self._load_keys()
        self._check_required()
        self.con.execute(
            f"CREATE TEMP TABLE {RECORD_KEYS} AS SELECT * FROM _keys QUALIFY row_number() "
            "OVER (PARTITION BY date, batch, id "
            "ORDER BY created_at DESC, filename DESC, file_row_number DESC) = 1"
        )
        self.con.execute("DROP TABLE _keys")
        self.con.execute(
            f"CREATE TEMP TABLE {STATE_KEYS} AS WITH latest AS (SELECT *, "
            f'max(attempt_id) OVER (PARTITION BY batch, "row") AS _latest FROM {RECORD_KEYS}), '
            "current AS (SELECT * EXCLUDE (_latest) FROM latest "
            "WHERE _latest IS NULL OR attempt_id = _latest "
            "QUALIFY row_number() OVER (PARTITION BY batch, id ORDER BY created_at DESC) = 1) "
            "SELECT * FROM current QUALIFY row_number() OVER (PARTITION BY "
            + ", ".join(quoted(k) for k in LEGACY_ROW_KEY)
            + " ORDER BY created_at DESC, attempt_id DESC NULLS LAST, id DESC) = 1"
        )
        self._load_usage(
            [self.store.uri(i.key) for b in batches for i in self.legacy.usage.get(b, [])]
        )

    def _source(self) -> tuple[str, list[str]]:
        """The old record files of this chunk as a DuckDB source, and their columns."""
        source = _read_sql(self.uris)
        try:
            return source, _columns(self.con, source)
        except duckdb.Error as exc:
            raise MigrationError(f"cannot read the old history files: {exc}") from exc

    def _load_keys(self) -> None:
        key_types = {name: self.record_types[name] for name in _KEY_COLUMNS}
        if not self.uris:
            nulls = typed_select((), key_types)
            self.con.execute(
                f"CREATE TEMP TABLE _keys AS SELECT {nulls}, NULL::VARCHAR AS filename, "
                "NULL::BIGINT AS file_row_number WHERE false"
            )
            return
        source, present = self._source()
        select = typed_select(present, key_types)
        try:
            self.con.execute(
                f"CREATE TEMP TABLE _keys AS SELECT {select}, filename, file_row_number "
                f"FROM {source}"
            )
        except duckdb.Error as exc:
            raise MigrationError(f"cannot read the old history files: {exc}") from exc

    def _check_required(self) -> None:
        predicate = " OR ".join(f"{quoted(c)} IS NULL" for c in REQUIRED_COLUMNS)
        bad = self.con.execute(
            f"SELECT batch, filename, count(*) FROM _keys WHERE {predicate} GROUP BY ALL "
            "ORDER BY ALL LIMIT 1"
        ).fetchone()
        if bad:
            batch, filename, count = bad
            raise MigrationError(
                f"batch {batch}: {count} record(s) in {filename} lack one of "
                f"{', '.join(REQUIRED_COLUMNS)}, without which a record has no place in the "
                "tables; nothing was imported: fix or move the file and run migrate again"
            )

    def _load_usage(self, uris: Sequence[str]) -> None:
        if not uris:
            nulls = typed_select((), self.usage_types)
            self.con.execute(f"CREATE TEMP TABLE {USAGE_ROWS} AS SELECT {nulls} WHERE false")
            return
        source = _read_sql(uris)
        try:
            select = typed_select(_columns(self.con, source), self.usage_types)
            self.con.execute(
                f"CREATE TEMP TABLE {USAGE_ROWS} AS SELECT {select} FROM {source} "
                "QUALIFY row_number() OVER (PARTITION BY date, batch, id "
                "ORDER BY deleted_at DESC NULLS LAST, filename DESC) = 1"
            )
        except duckdb.Error as exc:
            raise MigrationError(f"cannot read the old usage roll-up: {exc}") from exc
        missing = self.con.execute(
            f"SELECT batch, count(*) FROM {USAGE_ROWS} WHERE id IS NULL GROUP BY ALL LIMIT 1"
        ).fetchone()
        if missing:
            raise MigrationError(f"batch {missing[0]}: {missing[1]} roll-up row(s) lack an id")

    # ---- whole rows ----

    def rows_at(self, needed: str) -> pa.Table:
        """The records of the loaded chunk at the places temp table ``needed`` lists
        (``filename``, ``file_row_number``), read whole: the tables' columns, with tags
        merged from the tag log, ``pinned`` from the pin log and ``event = 'generate'``
        recorded at ``created_at``, then ``needed``'s other columns.
        """
        source, present = self._source()
        tags = (
            "CASE WHEN l.record_id IS NULL THEN r.tags ELSE list_concat("
            "list_filter(coalesce(r.tags, []), lambda t: NOT list_contains(l.removed, t)), "
            "list_filter(l.added, lambda t: NOT list_contains(coalesce(r.tags, []), t))) END"
        )
        new = {
            "tags": f"{tags} AS tags",
            "pinned": "coalesce(p.pinned, false) AS pinned",
            "event": "'generate' AS event",
            "recorded_at": "r.created_at AS recorded_at",
        }
        columns = [new.get(name, f"r.{quoted(name)}") for name in TABLE_SCHEMA.names]
        conformed = typed_select(present, self.record_types, _NEW_COLUMNS)
        try:
            return self.con.execute(
                f"SELECT {', '.join(columns)}, n.* EXCLUDE (filename, file_row_number) FROM "
                f"(SELECT {conformed}, filename, file_row_number FROM {source}) r "
                f"JOIN {needed} n USING (filename, file_row_number) "
                "LEFT JOIN _tag_lists l ON l.record_id = r.id LEFT JOIN _pins p ON p.id = r.id"
            ).fetch_arrow_table()
        except duckdb.Error as exc:
            raise MigrationError(f"cannot read the old history files: {exc}") from exc

"""Usage and cost reports: what was generated, what it cost, where storage goes.

Figures come from a ``usage`` view over two tables, so deleting old images never rewrites
the past: every billing record in the audit trail (``generation_records`` with ``event =
'generate'``, one per id, the newest: every outcome of every run, so cost is what was
billed, and a tag or pin change, which appends a record too, never counts again), plus the
``usage_rollup`` table retention MERGEs into before it deletes records, counted only for
ids no longer in the audit trail (a cleanup killed between roll-up and deletion never
counts a record twice).

A report covers whole UTC days ``since``..``until`` (by ``date``, the day a record was
created) and is written as ``report.md`` with two PNG charts and ``figures.csv`` (the same
figures in long form: section, key, metric, value) under ``reports/<since>--<until>/`` in
the storage root, and optionally to a local folder (:mod:`ideogram_pipeline.reports.rendering`).
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from ideogram_pipeline import history
from ideogram_pipeline.history.tables import GENERATIONS, RECORDS, TABLES_PREFIX, USAGE
from ideogram_pipeline.ideogram.generation import STATUSES
from ideogram_pipeline.lifecycle.retention import AUDIT_PREFIX
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore

__all__ = ["REPORTS_PREFIX", "STATUSES", "UsageReport", "build_report", "connect_usage"]

REPORTS_PREFIX = "reports"
DIMENSIONS = {
    "model": "model",
    "rendering_speed": "rendering_speed",
    "style": "style_type",
    "batch": "batch",
    "product": "product",
    # Issue 19: generations and operations on stored images (upscale, describe, ...) apart.
    "operation": "operation",
}
#: What a record was billed as (issue 18's controls change the product, prices.py).
_PRODUCT_SQL = (
    "CASE WHEN transparent THEN 'transparent background' "
    "WHEN list_contains(reference_roles, 'character') THEN 'character reference' "
    "WHEN quality IS NOT NULL THEN '4.5 quality ' || lower(quality) "
    "WHEN reference_roles IS NOT NULL THEN 'style reference' "
    "ELSE 'standard' END"
)
_PRODUCT_COLUMNS = {"transparent", "reference_roles", "quality"}
_USAGE_COLUMNS = (
    "id, date, batch, created_at, model, rendering_speed, style_type, status, error, "
    "cost_usd, size_bytes, latency_ms, simulated, coalesce(operation, 'generate') AS operation"
)
_COUNTS = (
    # (describe answers with text: billed, but no image)
    "count(*) AS records, "
    "count(*) FILTER (status IN ('stored', 'unsafe') AND operation <> 'describe') AS images, "
    + ", ".join(f"count(*) FILTER (status = '{s}') AS {s}" for s in STATUSES)
    + ", sum(coalesce(cost_usd, 0)) AS cost_usd"
)
_WINDOW = "date BETWEEN $since AND $until"


def connect_usage(settings: Settings, store: ObjectStore) -> duckdb.DuckDBPyConnection:
    """The history connection plus the ``usage_rollup`` table and the ``usage`` view."""
    con = history.connect(settings, store, views=(RECORDS, GENERATIONS, USAGE))
    described = con.execute("SELECT * FROM generation_records LIMIT 0").description or ()
    # A history written before the controls has no such columns: every record is standard.
    has_controls = {column[0] for column in described} >= _PRODUCT_COLUMNS
    product = _PRODUCT_SQL if has_controls else "'standard'"
    con.execute(
        f"CREATE OR REPLACE VIEW usage AS SELECT {_USAGE_COLUMNS}, {product} AS product, "
        "NULL::TIMESTAMPTZ AS deleted_at FROM generation_records "
        "WHERE coalesce(event, 'generate') = 'generate' "
        "QUALIFY row_number() OVER (PARTITION BY id ORDER BY recorded_at DESC) = 1 "
        f"UNION ALL SELECT {_USAGE_COLUMNS}, NULL AS product, deleted_at FROM usage_rollup "
        "WHERE id NOT IN (SELECT id FROM generation_records WHERE id IS NOT NULL)"
    )
    return con


@dataclass
class UsageReport:
    """Every figure of one report, as frames and dicts ready to render."""

    since: date
    until: date
    generated_at: datetime
    storage_root: str
    totals: dict[str, Any]
    by_day: pd.DataFrame
    cost_by_day_model: pd.DataFrame
    by_dimension: dict[str, pd.DataFrame]
    status_mix: pd.DataFrame
    top_errors: pd.DataFrame
    latency: pd.DataFrame
    storage: dict[str, Any]
    growth: pd.DataFrame
    budget: list[dict[str, Any]]
    deletions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def folder(self) -> str:
        return f"{REPORTS_PREFIX}/{self.since.isoformat()}--{self.until.isoformat()}"


def _df(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    return con.execute(sql, params).df()


def _by_day(con: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> pd.DataFrame:
    frame = _df(
        con,
        f"WITH d AS (SELECT date, {_COUNTS}, "
        "sum(size_bytes) FILTER (status = 'stored') AS bytes_added "
        f"FROM usage_window WHERE {_WINDOW} GROUP BY date), "
        # Every day of the window (of the data's span when the window is over a year), so
        # quiet days show as zero rather than vanish from the chart.
        "span AS (SELECT CAST(unnest(range(CASE WHEN $until - $since <= 366 THEN $since "
        "ELSE min(date) END, CASE WHEN $until - $since <= 366 THEN $until ELSE max(date) END "
        "+ 1, INTERVAL 1 DAY)) AS DATE) AS date FROM d) "
        "SELECT span.date, d.* EXCLUDE (date) FROM span LEFT JOIN d USING (date) ORDER BY 1",
        params,
    )
    return _integers(frame.fillna(0))


def _integers(frame: pd.DataFrame) -> pd.DataFrame:
    """Counts and bytes as integers (a LEFT JOIN or a sum turns them into floats)."""
    for column in frame.columns:
        if column != "date" and not column.endswith(("_usd", "_ms", "share")):
            frame[column] = frame[column].fillna(0).astype("int64")
    return frame


def _plain(values: Mapping[Hashable, Any]) -> dict[str, Any]:
    """A pandas record as plain numbers: dollars as floats, counts as ints."""
    plain: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key)
        plain[name] = float(value) if name.endswith("_usd") else int(value)
    return plain


def _budget(
    con: duckdb.DuckDBPyConnection, since: date, until: date, budget: float | None
) -> list[dict[str, Any]]:
    """Spend per calendar month touched by the window (whole months up to ``until``)."""
    first = date(since.year, since.month, 1)
    spent = dict(
        con.execute(
            "SELECT strftime(date, '%Y-%m'), sum(coalesce(cost_usd, 0)) FROM usage "
            "WHERE date BETWEEN ? AND ? GROUP BY 1",
            [first, until],
        ).fetchall()
    )
    rows = []
    month = first
    while month <= until:
        days = calendar.monthrange(month.year, month.month)[1]
        end = month + timedelta(days=days - 1)
        spend = float(spent.get(month.strftime("%Y-%m"), 0.0))
        elapsed = (min(end, until) - month).days + 1
        row: dict[str, Any] = {"month": month.strftime("%Y-%m"), "spend_usd": spend}
        # A month still running is projected at its average daily spend so far.
        row["projected_usd"] = spend / elapsed * days if elapsed < days else spend
        if budget is not None:
            row["budget_usd"] = budget
            row["used_pct"] = 100.0 * spend / budget if budget else None
            row["remaining_usd"] = budget - spend
        rows.append(row)
        month = end + timedelta(days=1)
    return rows


def _deletions(store: ObjectStore, since: date, until: date) -> list[dict[str, Any]]:
    found = []
    for info in store.list(AUDIT_PREFIX + "/"):
        day = info.key[len(AUDIT_PREFIX) + 1 :].split("/")[0].removeprefix("date=")
        if info.key.endswith(".json") and since.isoformat() <= day <= until.isoformat():
            audit = json.loads(store.get_bytes(info.key))
            found.append(
                {
                    "finished_at": audit.get("finished_at"),
                    "records": audit.get("records", 0),
                    "bytes": audit.get("bytes", 0),
                    "oldest": audit.get("oldest"),
                    "policy": audit.get("policy"),
                    "reason": audit.get("reason", ""),
                }
            )
    return sorted(found, key=lambda a: str(a["finished_at"]))


def build_report(
    settings: Settings,
    store: ObjectStore,
    since: date | None = None,
    until: date | None = None,
    *,
    monthly_budget_usd: float | None = None,
) -> UsageReport:
    """Compute every figure for ``since``..``until`` (default: the last 30 days)."""
    until = until or datetime.now(UTC).date()
    since = since or until - timedelta(days=29)
    params = {"since": since, "until": until}
    con = connect_usage(settings, store)
    try:
        # One scan of the history for the window; every window figure reads this table.
        con.execute(
            f"CREATE TEMP TABLE usage_window AS SELECT * FROM usage WHERE {_WINDOW}", params
        )
        totals = _df(con, f"SELECT {_COUNTS} FROM usage_window WHERE {_WINDOW}", params)
        totals_dict = _plain(totals.fillna(0).to_dict("records")[0])
        simulated = con.execute(
            f"SELECT count(*) FILTER (simulated) FROM usage_window WHERE {_WINDOW}", params
        ).fetchone()[0]  # type: ignore[index]
        totals_dict["simulated_records"] = int(simulated or 0)
        # ``unknown`` records carry no cost: a request left and no answer was recorded, so
        # Ideogram may or may not have billed it. Counted apart, never in ``cost_usd``.
        totals_dict["possibly_billed"] = int(totals_dict.get("unknown") or 0)
        by_dimension = {
            name: _df(
                con,
                f"SELECT coalesce(CAST({column} AS VARCHAR), '(none)') AS key, {_COUNTS} "
                f"FROM usage_window WHERE {_WINDOW} GROUP BY 1 "
                "ORDER BY cost_usd DESC, records DESC, key",
                params,
            )
            for name, column in DIMENSIONS.items()
        }
        status_mix = _df(
            con,
            "SELECT status, count(*) AS records, count(*) / sum(count(*)) OVER () AS share "
            f"FROM usage_window WHERE {_WINDOW} GROUP BY status ORDER BY records DESC, status",
            params,
        )
        top_errors = _df(
            con,
            "SELECT status, regexp_replace(error, '^row [0-9]+: ', '') AS reason, "
            f"count(*) AS records FROM usage_window WHERE {_WINDOW} AND error IS NOT NULL "
            "AND status <> 'stored' GROUP BY ALL ORDER BY records DESC, reason LIMIT 10",
            params,
        )
        latency = _df(
            con,
            "SELECT CASE WHEN grouping(model) = 1 THEN 'all models' "
            "ELSE coalesce(model, '(none)') END AS model, count(latency_ms) AS images, "
            "avg(latency_ms) AS avg_ms, quantile_cont(latency_ms, 0.95) AS p95_ms "
            f"FROM usage_window WHERE {_WINDOW} AND latency_ms IS NOT NULL GROUP BY ROLLUP (model) "
            "ORDER BY grouping(model), model",
            params,
        )
        cost_by_day_model = _df(
            con,
            "SELECT date, coalesce(model, '(none)') AS model, sum(coalesce(cost_usd, 0)) "
            f"AS cost_usd FROM usage_window WHERE {_WINDOW} GROUP BY ALL ORDER BY ALL",
            params,
        )
        growth = _df(
            con,
            "WITH added AS (SELECT date AS day, sum(size_bytes) AS added FROM usage "
            "WHERE status = 'stored' GROUP BY 1), "
            "deleted AS (SELECT CAST(deleted_at AS DATE) AS day, sum(size_bytes) AS deleted "
            "FROM usage WHERE deleted_at IS NOT NULL AND status = 'stored' GROUP BY 1), "
            "days AS (SELECT day FROM added UNION SELECT day FROM deleted), "
            "g AS (SELECT day, coalesce(added, 0) AS bytes_added, "
            "coalesce(deleted, 0) AS bytes_deleted FROM days "
            "LEFT JOIN added USING (day) LEFT JOIN deleted USING (day)) "
            "SELECT day AS date, bytes_added, bytes_deleted, "
            "sum(bytes_added - bytes_deleted) OVER (ORDER BY day) AS bytes_retained FROM g "
            "QUALIFY day BETWEEN $since AND $until ORDER BY day",
            params,
        )
        growth = _integers(growth)
        retained = con.execute(
            "SELECT count(*), coalesce(sum(size_bytes), 0) FROM usage "
            "WHERE deleted_at IS NULL AND status = 'stored'"
        ).fetchone()
        budget = _budget(con, since, until, monthly_budget_usd)
        by_day = _by_day(con, params)
    finally:
        con.close()
    # The tables (data files and logs) and the audits: what the history costs to keep.
    metadata = [*store.list(TABLES_PREFIX + "/"), *store.list("metadata/")]
    storage = {
        "images_retained": int(retained[0]) if retained else 0,
        "image_bytes_retained": int(retained[1]) if retained else 0,
        "metadata_files": len(metadata),
        "metadata_bytes": sum(i.size for i in metadata),
        "image_bytes_added_in_window": int(growth["bytes_added"].sum()) if len(growth) else 0,
        "image_bytes_deleted_in_window": int(growth["bytes_deleted"].sum()) if len(growth) else 0,
    }
    return UsageReport(
        since=since,
        until=until,
        generated_at=datetime.now(UTC),
        storage_root=store.root,
        totals=totals_dict,
        by_day=by_day,
        cost_by_day_model=cost_by_day_model,
        by_dimension=by_dimension,
        status_mix=status_mix,
        top_errors=top_errors,
        latency=latency,
        storage=storage,
        growth=growth,
        budget=budget,
        deletions=_deletions(store, since, until),
    )

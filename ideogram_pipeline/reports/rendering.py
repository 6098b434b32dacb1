"""Rendering a :class:`~ideogram_pipeline.reports.usage.UsageReport`: Markdown, CSV, files.

Markdown cells pass through ``escape_markdown_cell`` and CSV cells through
``neutralise_csv_cell``: batch names and error texts come from users and from the API.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ideogram_pipeline.reports.charts import cost_per_day_by_model, images_per_day_by_status
from ideogram_pipeline.reports.usage import STATUSES, UsageReport
from ideogram_pipeline.safe_output import escape_markdown_cell, neutralise_csv_cell
from ideogram_pipeline.storage import ObjectStore

__all__ = ["ReportFiles", "charts", "report_csv", "report_markdown", "write_report"]

COST_CHART = "cost_per_day.png"
STATUS_CHART = "images_per_day.png"
TITLES = {
    "model": "By model",
    "rendering_speed": "By rendering speed",
    "style": "By style",
    "batch": "By batch",
    "product": "By product (transparent, character reference, 4.5 quality tier)",
    "operation": "By operation (generate, upscale, describe, remix, ...)",
}


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if value == value else ""
    if hasattr(value, "isoformat"):
        return str(value.isoformat())[:10]
    return escape_markdown_cell(value, limit=120)


def _table(frame: pd.DataFrame, money: tuple[str, ...] = ("cost_usd",)) -> list[str]:
    if frame.empty:
        return ["_(none)_", ""]
    columns = list(frame.columns)
    lines = [
        "| " + " | ".join(escape_markdown_cell(c) for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(columns, row, strict=True):
            cells.append(f"${value:,.2f}" if column in money else _cell(value))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def charts(report: UsageReport) -> dict[str, bytes]:
    """The two PNG charts by file name."""
    return {
        COST_CHART: cost_per_day_by_model(report.cost_by_day_model),
        STATUS_CHART: images_per_day_by_status(report.by_day),
    }


def report_markdown(report: UsageReport, images: dict[str, str] | None = None) -> str:
    """The report as Markdown; ``images`` maps chart names to links (default: file names)."""
    images = images or {COST_CHART: COST_CHART, STATUS_CHART: STATUS_CHART}
    t = report.totals
    lines = [
        f"# Usage and cost: {report.since} to {report.until}",
        "",
        f"Generated {report.generated_at.isoformat(timespec='seconds')} from "
        f"`{escape_markdown_cell(report.storage_root)}`. Days are UTC creation days; every "
        "record of every run counts, including records already deleted by retention.",
        "",
    ]
    if t.get("simulated_records"):
        lines += [f"**SIMULATED:** {t['simulated_records']} records came from the simulator.", ""]
    lines += ["## Summary", ""]
    if t.get("possibly_billed"):
        lines += [
            f"**Possibly billed:** {t['possibly_billed']} records ended `unknown` (a request "
            "left and no answer was recorded); they are not in `cost_usd`. "
            "`ideogram-pipeline unknown` lists them with what resending would cost.",
            "",
        ]
    summary = pd.DataFrame([{k: t[k] for k in ("records", "images", *STATUSES, "cost_usd")}])
    lines += _table(summary)
    lines += ["## Budget", ""]
    budget = pd.DataFrame(report.budget)
    if "budget_usd" not in budget.columns:
        lines += ["No monthly budget configured (IDEOGRAM_MONTHLY_BUDGET_USD).", ""]
    lines += _table(budget, money=("spend_usd", "projected_usd", "budget_usd", "remaining_usd"))
    lines += [
        "## Charts",
        "",
        f"![Cost per day by model]({images[COST_CHART]})",
        "",
        f"![Images per day by status]({images[STATUS_CHART]})",
        "",
        "## By day",
        "",
    ]
    lines += _table(report.by_day[report.by_day["records"] > 0])  # quiet days: in the CSV
    for name, frame in report.by_dimension.items():
        lines += [f"## {TITLES[name]}", "", *_table(frame)]
    lines += ["## Status mix", "", *_table(report.status_mix)]
    lines += ["## Top error reasons", "", *_table(report.top_errors)]
    lines += ["## Latency per image (ms)", "", *_table(report.latency)]
    s = report.storage
    lines += [
        "## Storage",
        "",
        f"- images retained: {s['images_retained']:,} ({human_bytes(s['image_bytes_retained'])})",
        f"- metadata: {s['metadata_files']:,} files ({human_bytes(s['metadata_bytes'])})",
        f"- added in window: {human_bytes(s['image_bytes_added_in_window'])}, "
        f"deleted in window: {human_bytes(s['image_bytes_deleted_in_window'])}",
        "",
        *_table(report.growth),
        "## Retention deletions",
        "",
    ]
    lines += _table(pd.DataFrame(report.deletions).drop(columns=["policy"], errors="ignore"))
    return "\n".join(lines)


def figure_rows(report: UsageReport) -> Iterator[tuple[str, str, str, Any]]:
    """Every figure as (section, key, metric, value)."""
    for metric, value in report.totals.items():
        yield "summary", "all", metric, value
    for frame, section, key in (
        (report.by_day, "by_day", "date"),
        (report.status_mix, "status_mix", "status"),
        (report.latency, "latency", "model"),
        (report.growth, "storage_growth", "date"),
        (pd.DataFrame(report.budget), "budget", "month"),
    ):
        yield from _frame_rows(frame, section, key)
    for name, frame in report.by_dimension.items():
        yield from _frame_rows(frame, f"by_{name}", "key")
    for number, row in enumerate(report.top_errors.itertuples(index=False), start=1):
        yield "top_errors", str(number), "status", row.status
        yield "top_errors", str(number), "reason", row.reason
        yield "top_errors", str(number), "records", row.records
    for metric, value in report.storage.items():
        yield "storage", "all", metric, value


def _frame_rows(frame: pd.DataFrame, section: str, key: str) -> Iterator[tuple[str, str, str, Any]]:
    for record in frame.to_dict("records"):
        name = record.pop(key)
        name = name.isoformat()[:10] if hasattr(name, "isoformat") else str(name)
        for metric, value in record.items():
            yield section, name, str(metric), value


def report_csv(report: UsageReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "key", "metric", "value"])
    for row in figure_rows(report):
        value = row[3]
        if isinstance(value, float) and value != value:
            value = ""
        writer.writerow([neutralise_csv_cell(cell) for cell in (*row[:3], value)])
    return buffer.getvalue()


@dataclass
class ReportFiles:
    keys: list[str] = field(default_factory=list)  # in the storage root
    local: list[Path] = field(default_factory=list)  # in --out
    markdown: str = ""
    charts: dict[str, bytes] = field(default_factory=dict)

    def embedded_markdown(self) -> str:
        """The Markdown with charts inlined as data URIs (for the Dagster UI)."""
        text = self.markdown
        for name, png in self.charts.items():
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            text = text.replace(f"]({name})", f"]({uri})")
        return text


def write_report(
    report: UsageReport, store: ObjectStore, out_dir: Path | None = None
) -> ReportFiles:
    """Write report.md, the charts and figures.csv under ``reports/`` (and ``out_dir``)."""
    pngs = charts(report)
    markdown = report_markdown(report)
    files: dict[str, tuple[bytes, str]] = {
        "report.md": (markdown.encode("utf-8"), "text/markdown; charset=utf-8"),
        "figures.csv": (report_csv(report).encode("utf-8"), "text/csv; charset=utf-8"),
        **{name: (data, "image/png") for name, data in pngs.items()},
    }
    result = ReportFiles(markdown=markdown, charts=pngs)
    for name, (data, content_type) in files.items():
        key = f"{report.folder}/{name}"
        store.put_bytes(key, data, content_type=content_type)
        result.keys.append(key)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / name).write_bytes(data)
            result.local.append(out_dir / name)
    return result

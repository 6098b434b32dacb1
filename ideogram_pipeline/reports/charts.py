"""The report's two PNG charts, drawn with matplotlib's Agg backend (no display needed).

Charts take plain pandas frames from :mod:`ideogram_pipeline.reports.usage` and return PNG bytes,
so the report can write them through any object store and embed them in Dagster metadata.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["cost_per_day_by_model", "images_per_day_by_status"]

STATUS_COLOURS = {
    "stored": "#2e7d32",
    "unsafe": "#f9a825",
    "rejected": "#6d4c41",
    "failed": "#c62828",
}


def _stacked_bars(
    frame: pd.DataFrame, title: str, ylabel: str, colours: dict[str, str] | None = None
) -> bytes:
    """``frame``: index = day, one column per stacked series."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4), dpi=100)  # not pyplot: no global state, thread-safe
    axes = figure.subplots()
    days = [str(day)[:10] for day in frame.index]  # dates or timestamps -> YYYY-MM-DD
    bottom = [0.0] * len(days)
    for column in frame.columns:
        values = [float(v) for v in frame[column].fillna(0)]
        colour = (colours or {}).get(str(column))
        axes.bar(days, values, bottom=bottom, label=str(column), color=colour)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if not days:
        axes.text(0.5, 0.5, "no data in this window", ha="center", va="center")
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    if len(frame.columns):
        axes.legend(loc="upper left", fontsize="small")
    step = max(1, len(days) // 12)  # at most ~12 date labels, readable at any window
    axes.set_xticks(range(0, len(days), step), days[::step], rotation=45, ha="right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def cost_per_day_by_model(cost: pd.DataFrame) -> bytes:
    """Columns ``date``, ``model``, ``cost_usd`` -> stacked bars of USD per day."""
    pivot = cost.pivot_table(
        index="date", columns="model", values="cost_usd", aggfunc="sum", fill_value=0.0
    )
    return _stacked_bars(pivot, "Cost per day by model", "USD")


def images_per_day_by_status(by_day: pd.DataFrame) -> bytes:
    """Columns ``date`` and one per status -> stacked bars of records per day."""
    columns = [status for status in STATUS_COLOURS if status in by_day.columns]
    frame = by_day.set_index("date")[columns]
    return _stacked_bars(frame, "Images per day by status", "records", STATUS_COLOURS)

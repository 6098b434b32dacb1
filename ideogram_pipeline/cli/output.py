"""Rows printed for people (an aligned table) or for programs (CSV, JSON).

Every command that prints records goes through :func:`emit`, so they all treat text from
the history alike: control characters never reach the terminal, CSV cells that a
spreadsheet would run as formulas are neutralised (headers too, since a query names its
own columns), and JSON carries full values with times in ISO form. Plain Python: no
DataFrame library is imported to print a few rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, TypeVar

import click

from ideogram_pipeline.safe_output import csv_cell

__all__ = ["FORMAT_OPTION", "TABLE_WIDTHS", "emit", "terminal_text", "text_or_json_option"]

F = TypeVar("F", bound=Callable[..., Any])

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def text_or_json_option(help_text: str) -> Callable[[F], F]:
    """``--format text|json`` for commands that show one thing (``inspect``, ``lineage``)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help=help_text,
    )


#: Search tables cut these columns to this width; CSV and JSON carry full values.
TABLE_WIDTHS = {"id": 12, "prompt": 48, "tags": 24, "created_at": 16}


def terminal_text(value: Any) -> str:
    """Terminal-safe text: no control characters (no escape sequences from prompts)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = "|".join(str(item) for item in value)
    elif isinstance(value, datetime):
        value = value.strftime("%Y-%m-%d %H:%M")
    text = str(value)
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def emit(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: str,
    *,
    widths: Mapping[str, int] = TABLE_WIDTHS,
    empty: str = "(no matches)",
) -> None:
    """Print ``rows`` as an aligned table (columns cut to ``widths``), CSV or JSON."""
    if fmt == "json":
        data = [{c: row.get(c) for c in columns} for row in rows]
        click.echo(json.dumps(data, indent=2, default=_json_value, ensure_ascii=False))
        return
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([csv_cell(column) for column in columns])
        for row in rows:
            writer.writerow([csv_cell(row.get(c)) for c in columns])
        click.echo(out.getvalue(), nl=False)
        return
    if not rows:
        click.echo(empty)
        return
    cells = []
    for row in rows:
        line = []
        for column in columns:
            text = terminal_text(row.get(column))
            limit = widths.get(column)
            if limit and len(text) > limit:
                text = text[:limit] if column == "id" else text[: limit - 1] + "…"
            line.append(text)
        cells.append(line)
    names = [terminal_text(column) for column in columns]
    sizes = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(names)]
    click.echo("  ".join(n.ljust(w) for n, w in zip(names, sizes, strict=True)).rstrip())
    for line in cells:
        click.echo("  ".join(t.ljust(w) for t, w in zip(line, sizes, strict=True)).rstrip())

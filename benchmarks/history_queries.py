"""History queries at scale: the product's views against bare DuckDB and a naive JSON scan.

On a history written by ``history_gen.py`` (local folder or ``s3://``), four questions
people ask, each answered three ways in the same run:

1. through the code paths of ``ideogram-pipeline query`` (``query_sandbox``: connection,
   ``generations`` view, lock-down) and ``search`` (``history.connect`` + ``search.search``),
   timed from opening the connection to the last row fetched, as each command does;
2. the same SQL with ``generations`` replaced by a bare ``read_parquet(...)`` over the same
   files in a fresh DuckDB connection (the baseline: target view <= 1.2x of it);
3. the naive approach: one JSON file of every record, loaded with ``json.load`` and scanned
   in Python (``--json-file``; written by ``history_gen.py --json-out``).

Questions: a count by model and day; a prompt word search (newest 50); a lookup by id; a
lookup by seed. Each figure is the median of ``--repeat`` runs.

    .venv/bin/python benchmarks/history_queries.py ROOT [--json-file FILE] [--repeat 5]
    .venv/bin/python benchmarks/history_queries.py --seaweedfs [--generate 1000000]

``--seaweedfs`` starts SeaweedFS on loopback and writes the history there first (with
``history_gen.py``), so the same questions are timed against an ``s3://`` root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_support import load_average

from ideogram_pipeline import history
from ideogram_pipeline.query_sandbox import sandboxed_connection
from ideogram_pipeline.search import SearchFilters, build_query
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.storage import open_store

VIEW_TARGET = 1.2
SECONDS_TARGET = 1.0
WORD = "kangaroo"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _bare_connection(settings: Settings) -> Any:
    import duckdb

    con = duckdb.connect(":memory:")
    if settings.is_s3:
        from ideogram_pipeline.storage.duckdb_s3 import configure_duckdb_s3

        configure_duckdb_s3(con, settings)
    return con


def _questions(con: Any) -> list[tuple[str, str, str, list[Any]]]:
    """(name, kind, SQL over `generations`, parameters); probe values from the data."""
    record_id, seed = con.execute(
        "SELECT id, seed FROM generations WHERE status = 'stored' AND seed IS NOT NULL "
        "ORDER BY id LIMIT 1 OFFSET 4321"
    ).fetchone()
    search_sql, search_params = build_query(SearchFilters(text=WORD, limit=50))
    seed_sql, seed_params = build_query(SearchFilters(seed=seed, limit=50))
    return [
        (
            "count by model and day",
            "query",
            "SELECT model, date, count(*) AS images FROM generations GROUP BY ALL ORDER BY ALL",
            [],
        ),
        (f"prompt word search ({WORD!r})", "search", search_sql, search_params),
        ("lookup by id", "query", "SELECT * FROM generations WHERE id = ?", [record_id]),
        (f"lookup by seed ({seed})", "search", seed_sql, seed_params),
    ]


def _naive(path: Path, record_id: str, seed: int) -> dict[str, float]:
    """Load every record from one JSON file and answer each question with a Python scan."""
    start = time.perf_counter()
    with path.open(encoding="utf-8") as handle:
        records = json.load(handle)
    load = time.perf_counter() - start
    # The same whole-word, any-case match as search.term_pattern (Python's \b is Unicode).
    pattern = re.compile(rf"\b{re.escape(WORD)}\b", re.IGNORECASE)
    scans: dict[str, Callable[[], Any]] = {
        "count by model and day": lambda: Counter((r["model"], r["date"]) for r in records),
        f"prompt word search ({WORD!r})": lambda: sorted(
            (r for r in records if r["prompt"] and pattern.search(r["prompt"])),
            key=lambda r: r["created_at"],
            reverse=True,
        )[:50],
        "lookup by id": lambda: [r for r in records if r["id"] == record_id],
        f"lookup by seed ({seed})": lambda: [r for r in records if r["seed"] == seed],
    }
    out = {"load": load}
    for name, scan in scans.items():
        start = time.perf_counter()
        scan()
        out[name] = time.perf_counter() - start
    out["records"] = len(records)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", help="storage root written by history_gen.py")
    parser.add_argument("--seaweedfs", action="store_true", help="an S3 root on SeaweedFS")
    parser.add_argument("--generate", type=int, default=1_000_000, help="records (with S3)")
    parser.add_argument("--json-file", help="the naive JSON file (history_gen.py --json-out)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.seaweedfs:
        import tempfile

        from history_gen import write_history

        from ideogram_pipeline.storage.seaweed import running_seaweedfs

        with tempfile.TemporaryDirectory() as tmp, running_seaweedfs(tmp) as server:
            server.create_bucket("history")
            os.environ.update(server.env())
            args.root = "s3://history/root"
            store = open_store(load_settings({**os.environ, "IDEOGRAM_STORAGE": args.root}))
            print(f"writing {args.generate} records to SeaweedFS: ", end="", flush=True)
            print(write_history(store, args.generate), flush=True)
            run(args)
        return
    if not args.root:
        parser.error("give a ROOT or --seaweedfs")
    run(args)


def run(args: argparse.Namespace) -> None:
    settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": args.root})
    store = open_store(settings)
    glob = store.uri("metadata/generations/**/*.parquet").replace("'", "''")
    bare_from = (
        f"read_parquet('{glob}', hive_partitioning = true, "
        "hive_types = {'date': DATE, 'batch': VARCHAR})"
    )
    files = sum(1 for info in store.list("metadata/generations/") if info.key.endswith(".parquet"))
    probe = history.connect(settings, store)
    total = probe.execute("SELECT count(*) FROM generation_records").fetchone()[0]
    current = probe.execute("SELECT count(*) FROM generations").fetchone()[0]
    questions = _questions(probe)
    record_id = questions[2][3][0]
    seed = questions[3][3][0]
    probe.close()
    print(
        f"history at {args.root}: {total} records ({current} current) in {files} files; "
        f"load average {load_average()} (2 cores); median of {args.repeat}"
    )

    results: dict[str, Any] = {"root": args.root, "records": total, "files": files}
    for name, kind, sql, params in questions:

        def through_product(sql: str = sql, params: list[Any] = params, kind: str = kind) -> int:
            # As the commands do: open the connection (views, sandbox for `query`), run, fetch.
            if kind == "query":
                con = sandboxed_connection(settings, store, sql=sql)
            else:
                con = history.connect(settings, store, views=("generations",), one_query=True)
            try:
                return len(con.execute(sql, params).fetchall())
            finally:
                con.close()

        def bare(sql: str = sql, params: list[Any] = params) -> int:
            con = _bare_connection(settings)
            try:
                plain = re.sub(r"\bFROM generations\b", f"FROM {bare_from}", sql)
                return len(con.execute(plain, params).fetchall())
            finally:
                con.close()

        bare(), through_product()  # warm the OS cache and DuckDB's extension loading
        # Alternated, so drifting load on a shared machine falls on both sides alike.
        bare_times, view_times = [], []
        for _ in range(args.repeat):
            bare_times.append(_timed(bare))
            view_times.append(_timed(through_product))
        bare_s, bare_rows = statistics.median(t for t, _ in bare_times), bare_times[-1][1]
        view_s, view_rows = statistics.median(t for t, _ in view_times), view_times[-1][1]
        ratio = view_s / bare_s
        results[name] = {
            "view_s": round(view_s, 4),
            "bare_s": round(bare_s, 4),
            "ratio": round(ratio, 3),
            "view_rows": view_rows,
            "bare_rows": bare_rows,
        }
        print(
            f"{name:34s} {kind:6s} view {view_s * 1000:7.0f} ms  bare read_parquet "
            f"{bare_s * 1000:7.0f} ms  ratio {ratio:5.2f} (target <= {VIEW_TARGET}; "
            f"< {SECONDS_TARGET:.0f} s locally)  rows {view_rows}/{bare_rows}",
            flush=True,
        )

    if args.json_file:
        naive = _naive(Path(args.json_file), record_id, seed)
        results["naive"] = naive
        print(
            f"naive JSON ({naive['records']} records): json.load {naive['load']:.1f} s, then",
            flush=True,
        )
        for name, *_rest in questions:
            total_s = naive["load"] + naive[name]
            print(
                f"  {name:34s} scan {naive[name] * 1000:7.0f} ms; load + scan {total_s:6.1f} s "
                f"= {total_s / results[name]['view_s']:6.0f}x the view",
                flush=True,
            )
    results["load_end"] = load_average()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

"""Where a ``query`` at a million records spends its time, stage by stage, against bare DuckDB.

Opens the history views as ``query`` does, one stage at a time (DuckDB connect, listing the
root, the listing's plan, creating the view, setting the file-list variables, the
sandbox), runs "count by model and day", and closes; then the same SQL over a bare
``read_parquet`` glob; and the query with and without the sandbox on otherwise identical
connections. Medians of ``--repeat`` rounds, alternated. Run ``history_queries.py`` first
(it warms the plan cache).

    .venv/bin/python benchmarks/history_stages.py /tmp/h1m [--repeat 11]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

import duckdb

from ideogram_pipeline import history, history_index, history_plan
from ideogram_pipeline.query_sandbox import allowed_root, lock_down
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store

SQL = "SELECT model, date, count(*) AS images FROM generations GROUP BY ALL ORDER BY ALL"
VIEW = "generations"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="storage root written by history_gen.py")
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": args.root})
    store = open_store(settings)
    glob = store.uri("metadata/generations/**/*.parquet").replace("'", "''")
    bare_sql = SQL.replace(
        f"FROM {VIEW}",
        f"FROM read_parquet('{glob}', hive_partitioning = true, "
        f"hive_types = {history_index.HIVE_TYPES})",
    )
    times: dict[str, list[float]] = defaultdict(list)

    def lap(name: str, started: float) -> float:
        now = time.perf_counter()
        times[name].append(now - started)
        return now

    for _ in range(args.repeat):
        started = clock = time.perf_counter()
        con = duckdb.connect(":memory:")
        clock = lap("product: DuckDB connect", clock)
        files = history_index.metadata_files(store)
        clock = lap("product: list the root", clock)
        uris = [store.uri(info.key) for info in files]
        plan = history_plan.plan_views(con, store, files, uris, (VIEW,))
        clock = lap("product: plan (hidden rows, schema flags)", clock)
        lists = history._FileLists(plan.uniform, uris)
        records = history._scan_sql(
            uris,
            plan.dirty.get(VIEW, []),
            view=VIEW,
            hidden=history_plan.hidden_table(VIEW),
            files=lists,
        )
        con.execute(lists.placeholders_sql() + f"CREATE VIEW {VIEW} AS {records}")
        clock = lap("product: create the view", clock)
        con.execute(lists.lists_sql())
        clock = lap("product: set the file lists", clock)
        lock_down(con, [allowed_root(settings, store)])
        clock = lap("product: sandbox settings", clock)
        con.execute(SQL).fetchall()
        clock = lap("product: query (sandboxed)", clock)
        con.close()
        clock = lap("product: close", clock)
        lap("product: total", started)

        started = clock = time.perf_counter()
        bare = duckdb.connect(":memory:")
        clock = lap("bare: DuckDB connect", clock)
        bare.execute(bare_sql).fetchall()
        clock = lap("bare: query (glob inside)", clock)
        bare.close()
        clock = lap("bare: close", clock)
        lap("bare: total", started)

        for sandboxed in (False, True):
            con = history.connect(settings, store, views=(VIEW,), one_query=True)
            if sandboxed:
                lock_down(con, [allowed_root(settings, store)])
            clock = time.perf_counter()
            con.execute(SQL).fetchall()
            lap(f"same views, query {'with' if sandboxed else 'without'} the sandbox", clock)
            con.close()

    print(f"{len(files)} files; median of {args.repeat}")
    for name, values in times.items():
        print(f"  {name:44s} {statistics.median(values) * 1000:7.1f} ms")
    ratio = statistics.median(times["product: total"]) / statistics.median(times["bare: total"])
    print(f"  product / bare: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Where a ``query`` on the Delta tables spends its time, stage by stage, against bare DuckDB.

In one process, alternating, median of ``--repeat`` rounds (wall and CPU of this process):

- the product's path, one step at a time: DuckDB connect, ``LOAD delta`` from the wheel
  (DuckDB verifies the extension's signature: hashing an 82 MB file), the listing that
  finds which tables exist, ``CREATE VIEW generations AS SELECT * FROM delta_scan(...)``,
  the sandbox settings, the statement check, the query, and close;
- bare DuckDB: connect, ``LOAD delta``, the query with ``delta_scan(...)`` written in it;
- two alternatives for the product, measured the same way: loading the extension with
  ``allow_unsigned_extensions`` (no signature check), and ``ATTACH '<table>' AS
  generations (TYPE delta)`` instead of a view (a view keeps DuckDB from pushing filters
  such as ``regexp_matches`` into the Delta scan).

Plus the import cost of the CLI itself (fresh processes: ``import ideogram_pipeline.cli``
and what ``query`` imports, against ``import duckdb``).

    .venv/bin/python benchmarks/history_stages.py /tmp/bench-h1m [--repeat 7]
        [--question count|word|id|seed]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import redirect_stdout
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_support import load_average

from ideogram_pipeline.history.duckdb_s3 import extension_path, load_extension
from ideogram_pipeline.history.layout import GENERATIONS, table_uri
from ideogram_pipeline.history.sandbox import allowed_root, check_statements, lock_down
from ideogram_pipeline.history.views import table_exists
from ideogram_pipeline.safe_output import sql_literal
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store

QUESTIONS = {
    "count": "SELECT model, date, count(*) AS images FROM {t} GROUP BY ALL ORDER BY ALL",
    "word": (
        'SELECT id, created_at, batch, "row", image_index, status, model, seed, prompt '
        "FROM {t} WHERE regexp_matches(prompt, '(?i)\\bkangaroo\\b') "
        "ORDER BY created_at DESC LIMIT 50"
    ),
    "id": "SELECT * FROM {t} WHERE id = '00000000000000000000000000000000'",
    "seed": "SELECT * FROM {t} WHERE seed = 1234567",
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Laps:
    """Wall and CPU per named stage, over rounds."""

    def __init__(self) -> None:
        self.times: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), _cpu()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), _cpu()
        self.times[name].append((wall - self.wall, cpu - self.cpu))
        self.wall, self.cpu = wall, cpu

    def print(self) -> None:
        for name, values in self.times.items():
            wall = statistics.median(v[0] for v in values) * 1000
            cpu = statistics.median(v[1] for v in values) * 1000
            print(f"  {name:56s} wall {wall:7.1f} ms   CPU {cpu:7.1f} ms")


def _imports(repeat: int) -> None:
    """Fresh processes: what the CLI's imports add to ``import duckdb``."""
    cases = {
        "python -c 'import duckdb'": "import duckdb",
        "import ideogram_pipeline.cli (every command module)": "import ideogram_pipeline.cli",
        "+ query's modules (sandbox, views, storage)": (
            "import ideogram_pipeline.cli, ideogram_pipeline.history.sandbox, "
            "ideogram_pipeline.history.views"
        ),
    }
    print(f"imports, fresh processes (median of {repeat}):")
    for name, code in cases.items():
        walls, cpus = [], []
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        print(
            f"  {name:56s} wall {statistics.median(walls) * 1000:7.1f} ms   "
            f"CPU {statistics.median(cpus) * 1000:7.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="storage root written by history_gen.py")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--question", choices=sorted(QUESTIONS), default="count")
    args = parser.parse_args()
    settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": args.root})
    store = open_store(settings)
    scan = f"delta_scan({sql_literal(table_uri(settings, GENERATIONS))})"
    delta = sql_literal(str(extension_path("delta")))
    sql = QUESTIONS[args.question]
    print(f"{args.question}: {sql.format(t='generations')}")
    print(f"load average {load_average()} (2 cores); median of {args.repeat} rounds")
    laps = Laps()
    for _ in range(args.repeat):
        laps.start()
        con = duckdb.connect(":memory:")
        laps.lap("product: DuckDB connect")
        load_extension(con, "delta")
        laps.lap("product: LOAD delta (signature checked)")
        table_exists(store, GENERATIONS)
        laps.lap("product: table_exists (list _delta_log/)")
        con.execute(f"CREATE OR REPLACE VIEW generations AS SELECT * FROM {scan}")
        laps.lap("product: CREATE VIEW (binds delta_scan: reads the log)")
        lock_down(con, [allowed_root(settings, store)])
        laps.lap("product: sandbox settings")
        check_statements(con, sql.format(t="generations"))
        laps.lap("product: statement check")
        rows = con.execute(sql.format(t="generations")).fetchall()
        laps.lap("product: query + fetch (view, sandboxed)")
        with redirect_stdout(io.StringIO()):
            for row in rows:
                print(*row)
        con.close()
        laps.lap("product: print + close")

        laps.start()
        con = duckdb.connect(":memory:")
        con.execute(f"LOAD {delta}")
        laps.lap("bare: connect + LOAD delta")
        con.execute(sql.format(t=scan)).fetchall()
        laps.lap("bare: query + fetch (delta_scan in the SQL)")
        con.close()
        laps.lap("bare: close")

        laps.start()
        con = duckdb.connect(":memory:", config={"allow_unsigned_extensions": True})
        con.execute(f"LOAD {delta}")
        laps.lap("alternative: connect + LOAD delta, unsigned allowed")
        attached = sql_literal(table_uri(settings, GENERATIONS))
        con.execute(f"ATTACH {attached} AS generations (TYPE delta)")
        lock_down(con, [allowed_root(settings, store)])
        laps.lap("alternative: ATTACH (TYPE delta) + sandbox")
        con.execute(sql.format(t="generations")).fetchall()
        laps.lap("alternative: query + fetch (attached, sandboxed)")
        con.close()
        laps.lap("alternative: close")
    laps.print()
    _imports(max(3, args.repeat // 2))
    print(f"load average at end {load_average()}")


if __name__ == "__main__":
    main()

"""Where a ``query`` at a million records spends its time: a pyinstrument profile.

Runs "count by model and day" through the product's path (sandboxed connection, views,
query, fetch) ``--repeat`` times in one process on a history written by
``history_gen.py``, under pyinstrument, and prints the call tree (wall time).

    .venv/bin/pip install pyinstrument   # not a project dependency
    .venv/bin/python benchmarks/profile_count_query.py /tmp/h1m [--repeat 5]
"""

from __future__ import annotations

import argparse
import os

from pyinstrument import Profiler

from ideogram_pipeline.query_sandbox import sandboxed_connection
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store

SQL = "SELECT model, date, count(*) AS images FROM generations GROUP BY ALL ORDER BY ALL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="storage root written by history_gen.py")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = load_settings({**os.environ, "IDEOGRAM_STORAGE": args.root})
    store = open_store(settings)
    sandboxed_connection(settings, store, sql=SQL).close()  # warm caches and imports
    profiler = Profiler(interval=0.0005)
    with profiler:
        for _ in range(args.repeat):
            con = sandboxed_connection(settings, store, sql=SQL)
            con.execute(SQL).fetchall()
            con.close()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()

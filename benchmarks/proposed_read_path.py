"""``ideogram-pipeline`` with a proposed faster read path, to measure it before adopting it.

Runs the real CLI (``ideogram_pipeline.cli.main``) with ``history.connect`` replaced by a
version that differs in two ways, each found while profiling ``query`` at a million
records (BENCHMARKS.md, section 5):

1. the connection allows unsigned extensions, so ``LOAD`` of the delta extension from its
   wheel skips DuckDB's signature check (hashing the 82 MB file: 0.17 s wall, 0.3 s CPU of
   every process); the file is the one pip installed, as trusted as the venv's own code,
   and the query sandbox still refuses ``LOAD`` and locks the configuration afterwards;
2. each table is ``ATTACH '<table>' AS generations (TYPE delta)`` instead of a view over
   ``delta_scan``: DuckDB does not push filters such as ``regexp_matches`` through a view
   into the Delta scan, and an attached table gets the same plan as ``delta_scan`` written
   in the SQL (the word search reads every column of every row through the view).

``--no-pandas`` (taken out of argv) also makes ``pandas`` and ``numpy`` unimportable, which
is what binding a parameter costs ``search``: DuckDB's Python client imports both as soon as
a statement has bound parameters, and works without them.

    IDEOGRAM_STORAGE=/tmp/bench-h1m .venv/bin/python benchmarks/proposed_read_path.py \\
        query "SELECT count(*) FROM generations"

Measurement only: the product is unchanged until the lead applies the change.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Any

if "--no-pandas" in sys.argv:
    sys.argv.remove("--no-pandas")
    sys.modules["pandas"] = None  # type: ignore[assignment]
    sys.modules["numpy"] = None  # type: ignore[assignment]

import duckdb

from ideogram_pipeline import history
from ideogram_pipeline.history import views
from ideogram_pipeline.history.layout import table_uri
from ideogram_pipeline.safe_output import sql_literal


def connect(
    settings: Any,
    store: Any = None,
    *,
    views: Collection[str] = views.VIEWS,
    one_query: bool = False,
) -> duckdb.DuckDBPyConnection:
    """As ``history.views.connect``, with the two changes above."""
    from ideogram_pipeline.history import views as module
    from ideogram_pipeline.storage import open_store
    from ideogram_pipeline.storage.duckdb_s3 import configure_duckdb_s3, load_extension

    del one_query
    store = store or open_store(settings)
    con = duckdb.connect(":memory:", config={"allow_unsigned_extensions": True})
    try:
        load_extension(con, "delta")
        if settings.is_s3:
            configure_duckdb_s3(con, settings)
        present = {name: module.table_exists(store, name) for name in views}
        if not any(present.values()) and module.has_legacy_history(store):
            raise module.HistoryNeedsMigration("old layout: run `ideogram-pipeline migrate`")
        for name in views:
            if present[name]:
                uri = sql_literal(table_uri(settings, name))
                con.execute(f"ATTACH {uri} AS {name} (TYPE delta)")
            else:
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {module._empty_sql(name)}")
    except BaseException:
        con.close()
        raise
    return con


def main() -> None:
    history.connect = connect  # what query_sandbox and the commands call
    views.connect = connect
    from ideogram_pipeline.cli import main as cli

    sys.argv[0] = "ideogram-pipeline"
    cli()


if __name__ == "__main__":
    main()

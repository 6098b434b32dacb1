"""Reading a batch from Excel next to the same batch as CSV (issue 18).

Writes one batch of ``--rows`` rows (prompt, seed, aspect ratio, a style code, a palette,
tags) as ``.csv``, ``.xlsx`` (openpyxl) and ``.xls`` (xlwt), then times
:func:`~ideogram_pipeline.batches.files.load_batch` on each: the best of ``--repeat`` reads,
parsing and validating every row.

    .venv/bin/python benchmarks/excel_batches.py [--rows 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ideogram_pipeline.batches.files import load_batch
from tests.support.spreadsheets import write_xls, write_xlsx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    header = ["prompt", "seed", "aspect_ratio", "style_codes", "color_palette", "tags"]
    body = [
        [
            f"A poster number {i} of a fox in snow",
            i,
            "16:9",
            "AAFF5733",
            "#FF0000:0.5|#00FF00",
            "a|b",
        ]
        for i in range(args.rows)
    ]
    rows = [header, *body]
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        csv = base / "batch.csv"
        csv.write_text("\n".join(",".join(map(str, row)) for row in rows) + "\n", "utf-8")
        files = [csv, write_xlsx(base / "batch.xlsx", rows), write_xls(base / "batch.xls", rows)]
        for path in files:
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                batch = load_batch(path)
                times.append(time.perf_counter() - start)
            assert len(batch.requests) == args.rows
            print(
                f"{path.suffix:6} {path.stat().st_size:>12,} bytes  {args.rows:,} rows  "
                f"best of {args.repeat}: {min(times) * 1000:,.0f} ms"
            )


if __name__ == "__main__":
    main()

"""Derive the project's prompt samples from the shared krea reference file.

A user's clone has no ``../shared/reference/``, so the tests and the demo carry their own
copies; this script is how those copies were made, so they can be checked and refreshed:

- ``tests/data/krea-prompts-sample.csv``: the header and the first ``--rows`` data records,
  byte for byte (``raw_data`` column, empty prompts and quoting included), because the
  tests are about real, messy input;
- ``prompts/krea-sample.csv``: a ``prompt``-only demo batch of hand-picked rows (no real
  people, drugs, violence or nudity), all valid, so a demo spends nothing on rejects.

Run from the repository root: ``python scripts/sample_prompts.py``. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "reference" / "krea-open-prompts-1k.csv"
TEST_SAMPLE = ROOT / "tests" / "data" / "krea-prompts-sample.csv"
DEMO_BATCH = ROOT / "prompts" / "krea-sample.csv"
#: 1-based data-row numbers in the source file picked for the demo batch.
DEMO_ROWS = (3, 7, 12, 26, 32, 33, 35, 41, 43, 51, 55, 65, 76, 83, 84, 98, 122, 132, 140, 147)


def verbatim_head(text: str, rows: int) -> str:
    """The header plus the first ``rows`` CSV records, cut at a record boundary.

    Records may span lines (quoted newlines), so the cut is found with the csv reader
    and the original lines are copied unchanged rather than re-serialised.
    """
    lines = io.StringIO(text, newline="").readlines()
    reader = csv.reader(iter(lines))
    end = 0
    for count, _record in enumerate(reader):
        end = reader.line_num
        if count == rows:  # record 0 is the header
            break
    return "".join(lines[:end])


def demo_prompts(text: str) -> list[str]:
    records = list(csv.DictReader(io.StringIO(text, newline="")))
    return [records[row - 1]["prompt"].strip() for row in DEMO_ROWS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--rows", type=int, default=200, help="data rows in the test sample")
    args = parser.parse_args()
    text = args.source.read_text(encoding="utf-8-sig")

    TEST_SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    with TEST_SAMPLE.open("w", encoding="utf-8", newline="") as out:
        out.write(verbatim_head(text, args.rows))

    DEMO_BATCH.parent.mkdir(parents=True, exist_ok=True)
    with DEMO_BATCH.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["prompt"])
        writer.writerows([prompt] for prompt in demo_prompts(text))
    print(f"wrote {TEST_SAMPLE.relative_to(ROOT)} and {DEMO_BATCH.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

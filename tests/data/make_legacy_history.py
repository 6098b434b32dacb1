"""Write ``tests/data/legacy-history/``: a small history made by the previous release's own code.

The migration (``ideogram_pipeline.history.migrate``) must import what release 2314ac4 (the
last one with the append-only Parquet history) actually wrote, not what we believe it
wrote. So this script exports that commit's tree (``git archive``), puts it first on
``PYTHONPATH`` with this project's virtualenv (its dependencies are the same; it never
imports ``deltalake``), and drives its own commands:

1. its bundled simulator, started once in a process of its own so attempt counters last
   across runs (a prompt with ``[sim:500x6]`` fails all six tries of the first run and
   succeeds on the re-run), with tiny images;
2. ``run`` through Dagster of ``landscapes`` twice (the re-run stores the row that
   failed; the row asking for 99 images is rejected, one is unsafe), then ``portraits``,
   ``drafts`` and ``external``;
3. ``tag`` (an add and a remove after the fact), ``pin``, ``pin`` + ``unpin``;
4. ``cleanup`` with a retention file that keeps everything but ``draft`` records for
   ten years: the unpinned draft record goes, leaving a usage roll-up and a finished
   cleanup manifest under ``metadata/lifecycle/``;
5. its own read semantics, recorded in ``legacy-history.json`` beside the fixture: per
   batch, the count and cost sum of its ``generation_records`` and ``generations`` views,
   each record's merged tags, the pinned ids and the roll-up rows. Tests compare the
   migrated tables with these answers;
6. last, the ``external`` batch's files are rewritten with only the documented metadata
   columns (DESIGN.md "Metadata columns": no ``attempt_id``, ``request_hash``, ...), as a
   file written by another tool would be. Step 5 ran before, on the full files.

Only ``metadata/`` is kept (images, reports and the Dagster home are left out: the
migration reads only metadata, and the fixture stays a few tens of kilobytes).

Regenerate (from the repository root; needs git and the project's venv)::

    .venv/bin/python tests/data/make_legacy_history.py

The ids, run ids and dates change on every regeneration; tests read them from
``legacy-history.json``, never from the source.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LEGACY_COMMIT = "2314ac4"
FIXTURE = HERE / "legacy-history"
EXPECTED = HERE / "legacy-history.json"

#: DESIGN.md's documented metadata columns: what a file written by another tool has.
DOCUMENTED_COLUMNS = [
    "id",
    "row",
    "image_index",
    "prompt",
    "expanded_prompt",
    "negative_prompt",
    "model",
    "style_type",
    "aspect_ratio",
    "resolution",
    "rendering_speed",
    "seed",
    "is_safe",
    "status",
    "error",
    "original_url",
    "stored_uri",
    "sha256",
    "size_bytes",
    "created_at",
    "cost_usd",
    "tags",
    "run_id",
]

HEADER = "prompt,model,aspect_ratio,rendering_speed,magic_prompt,seed,num_images,tags\n"
BATCHES = {
    "landscapes": (
        '"A misty pine forest at dawn, wide photograph",V_3,16x9,TURBO,OFF,12345,2,'
        "landscape|forest\n"
        '"A glass greenhouse full of orchids [sim:500x6]",V_3,1x1,TURBO,OFF,7,1,greenhouse\n'
        '"A stormy harbour at night [sim:unsafe]",V_3,1x1,DEFAULT,OFF,8,1,\n'
        '"An impossible request",V_3,1x1,TURBO,OFF,9,99,\n'
    ),
    "portraits": (
        '"A portrait of an old fisherman, soft window light",V_3,2x3,QUALITY,OFF,11,1,people\n'
        '"A portrait of a cat wearing a crown",V_2_TURBO,1x1,,OFF,12,1,cats\n'
    ),
    "drafts": (
        '"A rough sketch of a castle",V_3,1x1,TURBO,OFF,21,1,draft\n'
        '"A rough sketch of a bridge",V_3,1x1,TURBO,OFF,22,1,draft\n'
    ),
    "external": ('"A lighthouse drawn by another tool",V_3,1x1,TURBO,OFF,31,1,external\n'),
}

SIMULATOR = """
import json, sys
from ideogram_pipeline.simulator.server import SimulatorConfig, running_simulator
config = SimulatorConfig(latency_s=0.01, image_scale=0.03)
with running_simulator(config) as sim:
    print(json.dumps({"base_url": sim.base_url, "api_key": sim.api_key}), flush=True)
    sys.stdin.read()
"""

#: Run by the old release: its views' answers, which the migrated tables must reproduce.
ORACLE = """
import json, sys
from ideogram_pipeline import history
from ideogram_pipeline.pins import pinned_ids
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.storage import open_store
settings = load_settings()
store = open_store(settings)
con = history.connect(settings, store)
def per_batch(view):
    rows = con.execute(
        f"SELECT batch, count(*), round(sum(coalesce(cost_usd, 0)), 6) FROM {view} "
        "GROUP BY batch ORDER BY batch").fetchall()
    return {b: {"records": n, "cost_usd": c} for b, n, c in rows}
current = con.execute(
    'SELECT id, batch, "row", image_index, status FROM generations ORDER BY ALL').fetchall()
records = con.execute(
    'SELECT id, batch, "row", image_index, status, tags, attempt_id FROM generation_records '
    "ORDER BY ALL").fetchall()
rollup = con.execute(
    "SELECT batch, id, cost_usd FROM read_parquet(?, hive_partitioning = true) ORDER BY ALL",
    [store.uri("metadata/usage_rollup/**/*.parquet")]).fetchall()
json.dump({
    "generation_records": per_batch("generation_records"),
    "generations": per_batch("generations"),
    "current": [dict(zip(["id", "batch", "row", "image_index", "status"], r)) for r in current],
    "records": [dict(zip(["id", "batch", "row", "image_index", "status", "tags", "attempt_id"], r))
                for r in records],
    "pinned": sorted(pinned_ids(store)),
    "usage_rollup": [dict(zip(["batch", "id", "cost_usd"], r)) for r in rollup],
}, sys.stdout, indent=1, default=str)
"""


class Legacy:
    """Runs the previous release's code (its tree first on ``PYTHONPATH``) in subprocesses."""

    def __init__(self, source: Path, root: Path, work: Path) -> None:
        self.source = source
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("IDEOGRAM_", "AWS_"))}
        self.env.update(
            PYTHONPATH=str(source),
            IDEOGRAM_STORAGE=str(root),
            DAGSTER_HOME=str(work / "dagster"),
            IDEOGRAM_RETENTION=str(work / "retention.toml"),
            IDEOGRAM_MAX_INFLIGHT="4",
        )
        (work / "dagster").mkdir()
        (work / "retention.toml").write_text(
            "[retention]\ndefault_days = 3650\nkeep_tags = ['keep']\n[retention.tags]\ndraft = 1\n"
        )
        self.work = work

    def python(self, code: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code],
            env=self.env,
            cwd=self.work,
            text=True,
            capture_output=True,
            check=True,
            **kwargs,
        )

    def cli(self, *args: str) -> str:
        code = "import sys; from ideogram_pipeline.cli import main; sys.exit(main())"
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=self.env,
            cwd=self.work,
            text=True,
            capture_output=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"legacy `{' '.join(args)}` failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def query(self, sql: str) -> list[dict[str, Any]]:
        return json.loads(self.cli("query", sql, "--format", "json"))


def export_source(target: Path) -> Path:
    """The previous release's tree, exported without touching this checkout."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", LEGACY_COMMIT],
        capture_output=True,
        check=True,
    ).stdout
    target.mkdir()
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def strip_optional_columns(root: Path, batch: str) -> None:
    """Rewrite ``batch``'s files with only the documented columns, as another tool would."""
    import pyarrow.parquet as pq

    for path in sorted(root.glob(f"metadata/generations/date=*/batch={batch}/*.parquet")):
        table = pq.read_table(path, partitioning=None)
        pq.write_table(table.select(DOCUMENTED_COLUMNS), path)


def generate(legacy: Legacy) -> dict[str, Any]:
    sim = subprocess.Popen(
        [sys.executable, "-c", SIMULATOR],
        env=legacy.env,
        cwd=legacy.work,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert sim.stdout is not None
        endpoint = json.loads(sim.stdout.readline())
        legacy.env.update(
            IDEOGRAM_BASE_URL=endpoint["base_url"], IDEOGRAM_API_KEY=endpoint["api_key"]
        )
        for name, rows in BATCHES.items():
            (legacy.work / f"{name}.csv").write_text(HEADER + rows)
        legacy.cli("run", "landscapes.csv")  # the greenhouse row fails six times
        legacy.cli("run", "landscapes.csv")  # ... and is stored on the re-run
        for name in ("portraits", "drafts", "external"):
            legacy.cli("run", f"{name}.csv")
    finally:
        if sim.stdin:
            sim.stdin.close()
        sim.wait(timeout=30)

    def one(where: str) -> str:
        rows = legacy.query(f"SELECT id FROM generations WHERE {where} ORDER BY id")
        assert rows, where
        return rows[0]["id"]

    forest = one("batch = 'landscapes' AND \"row\" = 1 AND image_index = 0")
    fisherman = one("batch = 'portraits' AND \"row\" = 1")
    cat = one("batch = 'portraits' AND \"row\" = 2")
    castle = one("batch = 'drafts' AND \"row\" = 1")
    legacy.cli("tag", forest, "--remove", "forest", "--add", "favourite")
    legacy.cli("tag", fisherman, "--add", "favourite")
    legacy.cli("pin", castle)  # survives the cleanup below
    legacy.cli("pin", cat)
    legacy.cli("unpin", cat)
    as_of = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    legacy.cli("cleanup", "--as-of", as_of)  # deletes the unpinned draft (the bridge)
    expected = json.loads(legacy.python(ORACLE).stdout)
    expected.update(
        legacy_commit=LEGACY_COMMIT,
        generated_at=datetime.now(UTC).isoformat(),
        ids={"forest": forest, "fisherman": fisherman, "cat": cat, "castle": castle},
        stripped_batch="external",
        documented_columns=DOCUMENTED_COLUMNS,
    )
    strip_optional_columns(legacy.root, "external")
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="an exported tree of the old release")
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="legacy-history-") as tmp:
        work = Path(tmp)
        source = args.source or export_source(work / "source")
        root = work / "root"
        expected = generate(Legacy(source.resolve(), root, work))
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(root / "metadata", args.out / "metadata")
    expected_path = args.out.with_suffix(".json") if args.out != FIXTURE else EXPECTED
    expected_path.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    files = sorted(p for p in args.out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(textwrap.dedent(f"wrote {args.out} ({len(files)} files, {size} bytes), {expected_path}"))


if __name__ == "__main__":
    main()

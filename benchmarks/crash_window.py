"""The crash window of asynchronous submissions: intent to generation id, in a run's journal.

Issue 16 asks that a kill leave a row ``unknown`` only within the network round trip. This
starts ``ideogram-pipeline run`` on a batch larger than it can finish (10 in flight, 0.5 s
a generation: 20 submissions a second, the run's busiest), SIGKILLs it after ``--kill-at``
seconds, and reads from the journal the killed run left how long each submission's
window was, by second of the run: the journal's own timestamps, intent to id. Beside it,
against the same simulator in the same seconds, a bare process does only the essential
work at 5 submissions a second: append an intent line, POST, append the id (the
baseline). The simulator also times its own handling of each POST (the server's share).

The sum of the windows over a span, divided by the span, is how many rows a kill of both
processes at a random moment would leave ``unknown`` on average. A kill of the run alone
leaves none: its submitting process journals the ids of the POSTs it had made
(``runs/submit_process.py``); the killed run's journal shows it (``open`` below).

    PYTHONPATH=. .venv/bin/python benchmarks/crash_window.py [--kill-at 8] [--rows 400]

The figures go to BENCHMARKS.md ("The crash window").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ideogram_pipeline.runs.journal import Journal
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig

_PIPELINE = [sys.executable, "-c", "from ideogram_pipeline.cli import main; main()", "run"]
#: Submissions a second of the bare process (its slots come on top of the run's).
BARE_RATE = 5
SLICES = ((0.0, 3.0), (3.0, 5.0), (5.0, 8.0), (8.0, 1e9))

BARE = """
import json, os, sys, threading, time, httpx
base, key, out = sys.argv[1], sys.argv[2], sys.argv[5]
seconds, rate = float(sys.argv[3]), int(sys.argv[4])
http = httpx.Client(base_url=base, headers={"Api-Key": key})
fd = os.open(out + ".journal", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
spans, lock = [], threading.Lock()
def one(n):
    started = time.time()
    os.write(fd, json.dumps({"n": n, "event": "intent"}).encode() + b"\\n")
    answer = http.post("/v2/image/generate/ideogram-3", json={"prompt": f"bare {n}", "async": True})
    os.write(fd, json.dumps({"n": n, "id": answer.json().get("generation_id")}).encode() + b"\\n")
    with lock:
        spans.append((started, (time.time() - started) * 1000, answer.status_code))
threads = []
for n in range(int(seconds * rate)):
    threads.append(threading.Thread(target=one, args=(n,)))
    threads[-1].start()
    time.sleep(1 / rate)
for thread in threads:
    thread.join()
open(out, "w").write(json.dumps(spans))
"""


@dataclass(frozen=True, order=True)
class Window:
    at_s: float  # since the run's process started
    ms: float | None  # None: no id journaled


class TimedApp:
    """The simulator's ASGI app, timing each POST from its first byte to its last answer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.spans: list[tuple[float, float]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        started = time.time()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.spans.append((started, (time.time() - started) * 1000))
            await send(message)

        await self.app(scope, receive, timed_send)


def journal_windows(folder: Path, started: float) -> list[Window]:
    times: dict[str, dict[str, float]] = {}
    for path in folder.rglob("*.jsonl"):
        Journal.wait_for_writers(path, timeout_s=30)  # the ids of POSTs still on the wire
        for event in Journal.read(path):  # a line torn by the kill is skipped
            at = datetime.fromisoformat(event["at"]).timestamp()
            times.setdefault(event["attempt_id"], {})[event["event"]] = at
    return sorted(
        Window(
            seen["intent"] - started,
            (seen["submitted"] - seen["intent"]) * 1000 if "submitted" in seen else None,
        )
        for seen in times.values()
        if "intent" in seen
    )


def describe(label: str, spans: list[float], seconds: float | None = None) -> str:
    """Median, p90 and max of ``spans``; with ``seconds``, the rows a kill of both processes
    at a random moment of that span would leave ``unknown`` on average."""
    if not spans:
        return f"  {label:<34} none"
    spans = sorted(spans)
    p90 = spans[int(len(spans) * 0.9)]
    line = (
        f"  {label:<34} n={len(spans):<4} median {statistics.median(spans):5.1f} ms  "
        f"p90 {p90:5.1f} ms  max {spans[-1]:6.1f} ms"
    )
    if seconds is not None:
        line += f"  unknown per kill {sum(spans) / 1000 / seconds:.3f}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--kill-at", type=float, default=8.0)
    parser.add_argument("--inflight", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crash-window-"))
    csv = work / "window.csv"
    rows = [f'"A crash window probe, item {n}",{n}' for n in range(args.rows)]
    csv.write_text("prompt,seed\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (work / "home").mkdir()
    slots = args.inflight + BARE_RATE * 2  # the bare process's POSTs never meet a 429
    simulator = Simulator(SimulatorConfig(latency_s=args.latency, max_inflight=slots))
    timed = TimedApp(simulator.app)
    simulator.app = timed
    with simulator as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IDEOGRAM_", "DAGSTER_"))}
        env |= {
            "IDEOGRAM_API_KEY": sim.api_key,
            "IDEOGRAM_BASE_URL": sim.base_url,
            "IDEOGRAM_STORAGE": str(work / "storage"),
            "IDEOGRAM_MAX_INFLIGHT": str(args.inflight),
            "DAGSTER_HOME": str(work / "home"),
        }
        started = time.time()
        run = subprocess.Popen(
            [*_PIPELINE, str(csv)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        bare_out = work / "bare.json"
        bare_args = [sim.base_url, sim.api_key, str(args.kill_at - 1), str(BARE_RATE)]
        bare = subprocess.Popen([sys.executable, "-c", BARE, *bare_args, str(bare_out)])
        time.sleep(max(0.0, started + args.kill_at - time.time()))
        run.send_signal(signal.SIGKILL)
        run.wait()
        bare.wait()
    windows = journal_windows(work / "storage" / "journal", started)
    bare_spans = [(at - started, ms) for at, ms, _status in json.loads(bare_out.read_text())]
    server = [(at - started, ms) for at, ms in timed.spans]
    open_rows = sum(1 for window in windows if window.ms is None)
    print(
        f"crash window: {args.rows} rows, {args.inflight} in flight, latency {args.latency} s, "
        f"run killed at {args.kill_at} s; {len(windows)} submissions journaled, "
        f"{open_rows} without an id after the kill"
    )
    for low, high in SLICES:
        end = min(high, args.kill_at)
        if end <= low:
            continue
        seconds = end - low
        print(f" seconds {low:.0f}-{end:.0f} of the run")
        spans = [w.ms for w in windows if w.ms is not None and low <= w.at_s < high]
        print(describe("run: intent to id (journal)", spans, seconds))
        bare_in = [ms for at, ms in bare_spans if low <= at < high]
        print(describe("bare process: intent to id", bare_in))
        print(
            describe(
                "simulator: its own POST handling", [ms for at, ms in server if low <= at < high]
            )
        )
        if spans and bare_in:
            ratio = statistics.median(spans) / statistics.median(bare_in)
            print(f"  {'run / bare process (medians)':<34} {ratio:.2f}")


if __name__ == "__main__":
    main()

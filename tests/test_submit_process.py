"""The run's submitting process (``runs/submit_process.py``): each POST between its two
journal lines, a stop, a failed connection, a process that died, and a run killed with
POSTs on the wire. Real processes against the bundled simulator over loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.ideogram.errors import ResponseLost, TransportError
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.requests import v2_body, v2_path
from ideogram_pipeline.ideogram.stop import SendsStopped
from ideogram_pipeline.ideogram.submit_channel import ChannelGone, SubmitLines
from ideogram_pipeline.runs.journal import Journal
from ideogram_pipeline.runs.submit_process import SubmitProcess
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator

REQUEST = GenerationRequest(row=3, prompt="A brass lantern on a pier", seed=7)


def _lines(journal: Path, written: list[dict[str, Any]], row: int = 3) -> SubmitLines:
    ids = {"row": row, "attempt_id": f"attempt-{row}"}
    return SubmitLines(
        journal, {"event": "intent", **ids}, {"event": "submitted", **ids}, written.append
    )


def _journal(tmp_path: Path) -> Path:
    return tmp_path / "journal" / "lanterns" / "00000001-run.submits.jsonl"


def _post(sim_url: str, key: str, lines: SubmitLines, *, stop: bool = False) -> httpx.Response:
    async def go() -> httpx.Response:
        process = SubmitProcess(sim_url, key, timeout_s=30.0, connections=4, threads=4)
        try:
            if stop:
                process.stop()
            post = process.post(v2_path(REQUEST), v2_body(REQUEST), None, lines)
            return await asyncio.wait_for(post, timeout=30)
        finally:
            process.close()

    return asyncio.run(go())


def test_a_submission_is_journaled_around_its_post(tmp_path: Path) -> None:
    written: list[dict[str, Any]] = []
    with running_simulator() as sim:
        response = _post(sim.base_url, sim.api_key, _lines(_journal(tmp_path), written))
        billed = sim.stats.requests_by_route
    generation_id = response.json()["generation_id"]
    lines = Journal.read(_journal(tmp_path))
    assert [(line["event"], line.get("generation_id")) for line in lines] == [
        ("intent", None),
        ("submitted", generation_id),
    ]
    assert all(line["attempt_id"] == "attempt-3" and line["at"] for line in lines)
    assert written == lines  # each line back to the run, as journaled, in order
    assert sum(billed.values()) == 1


def test_after_a_stop_nothing_is_sent_or_journaled(tmp_path: Path) -> None:
    written: list[dict[str, Any]] = []
    with running_simulator() as sim:
        with pytest.raises(SendsStopped):
            _post(sim.base_url, sim.api_key, _lines(_journal(tmp_path), written), stop=True)
        assert sum(sim.stats.requests_by_route.values()) == 0
    assert written == [] and not _journal(tmp_path).exists()


def test_a_refused_connection_is_retryable_and_its_intent_stays(tmp_path: Path) -> None:
    written: list[dict[str, Any]] = []
    with pytest.raises(TransportError) as failed:
        _post("http://127.0.0.1:1", "key", _lines(_journal(tmp_path), written))
    assert failed.value.retryable  # never sent: not a ResponseLost
    assert [line["event"] for line in written] == ["intent"]
    assert [line["event"] for line in Journal.read(_journal(tmp_path))] == ["intent"]


def test_without_its_process_the_client_submits_from_its_threads(tmp_path: Path) -> None:
    """The process died before the run's first submission: nothing was sent through it,
    and the row goes from the client's threads with its callbacks instead."""
    written: list[dict[str, Any]] = []
    ids: list[str] = []
    with running_simulator() as sim:

        async def go() -> str | None:
            async with IdeogramClient(sim.base_url, sim.api_key) as client:
                process = SubmitProcess(
                    sim.base_url, sim.api_key, timeout_s=30.0, connections=4, threads=4
                )
                client.use_channel(process)
                os.kill(process.pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while process.usable and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                with pytest.raises(ChannelGone):
                    await process.post("/", None, None, _lines(_journal(tmp_path), written))
                lines = _lines(_journal(tmp_path), written)
                response = await client.generate_async(REQUEST, ids.append, lines=lines)
                return response.generation_id

        generation_id = asyncio.run(go())
        assert sim.stats.billed_images == 1
    assert ids == [generation_id] and written == [] and not _journal(tmp_path).exists()


KILLED_RUN = """
import asyncio, os, signal, sys
from pathlib import Path
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.requests import v2_body, v2_path
from ideogram_pipeline.ideogram.submit_channel import SubmitLines
from ideogram_pipeline.runs.submit_process import SubmitProcess

base_url, key, journal = sys.argv[1], sys.argv[2], Path(sys.argv[3])

async def main():
    process = SubmitProcess(base_url, key, timeout_s=30.0, connections=4, threads=4)
    print(process.pid, flush=True)
    intents = []

    def written(line):
        intents.append(line)
        if len(intents) == 3:  # every intent journaled, no answer yet: die
            os.kill(os.getpid(), signal.SIGKILL)

    posts = []
    for row in range(3):
        request = GenerationRequest(row=row, prompt=f"A lighthouse at dusk {row}", seed=row)
        ids = {"row": row, "attempt_id": f"attempt-{row}"}
        intent, submitted = {"event": "intent", **ids}, {"event": "submitted", **ids}
        lines = SubmitLines(journal, intent, submitted, written)
        posts.append(process.post(v2_path(request), v2_body(request), None, lines))
    await asyncio.gather(*posts)

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_a_killed_run_s_process_journals_the_ids_of_posts_on_the_wire(tmp_path: Path) -> None:
    """SIGKILL the run once its three intents are journaled and before Ideogram answers
    (each answer takes 1 s): the submitting process still journals the three ids, so the
    next run (which waits for it to let go of the journal) polls them instead of reporting
    the rows ``unknown``; then it exits."""
    journal = _journal(tmp_path)
    config = SimulatorConfig(submit_latency_s=1.0)
    with Simulator(config) as sim:
        run = subprocess.Popen(
            [sys.executable, "-c", KILLED_RUN, sim.base_url, sim.api_key, str(journal)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert run.stdout is not None
        worker = int(run.stdout.readline())
        assert run.wait(timeout=60) == -signal.SIGKILL
        run.stdout.close()
        # What a run taking the batch over does first: wait for the killed run's writers.
        assert [line["event"] for line in Journal.read(journal)] == ["intent"] * 3
        assert Journal.wait_for_writers(journal, timeout_s=15)
        lines = Journal.read(journal)
        deadline = time.monotonic() + 5
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(worker), "the submitting process outlived its POSTs"
        submitted = {
            line["row"]: line["generation_id"] for line in lines if "generation_id" in line
        }
        assert sorted(submitted) == [0, 1, 2]
        for generation_id in submitted.values():  # each is a generation Ideogram accepted
            answer = httpx.get(
                f"{sim.base_url}/v2/generations/{generation_id}",
                headers={"Api-Key": sim.api_key},
            )
            assert answer.status_code == 200, answer.text
    assert [line["event"] for line in lines].count("intent") == 3
    assert json.dumps(lines).count(sim.api_key) == 0


def test_a_journal_held_open_is_waited_for_until_its_writer_lets_go(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    writer = Journal.at(path)
    writer.hold_open()
    writer.append({"event": "intent", "row": 1, "attempt_id": "a"})
    started = time.monotonic()
    assert not Journal.wait_for_writers(path, timeout_s=0.3)
    assert time.monotonic() - started >= 0.3
    writer.close()  # as the kernel does when the writer's process ends
    assert Journal.wait_for_writers(path, timeout_s=0.3)
    assert Journal.wait_for_writers(tmp_path / "no-such.jsonl", timeout_s=0.3)


def test_a_cancelled_caller_still_gets_its_lines_and_the_journal_waits(tmp_path: Path) -> None:
    """A row cut mid-POST (a forced stop, an aborted batch): its caller is cancelled, but
    the process still journals the id when Ideogram answers. The id must reach the run
    too (it copies it to the store), and the run must not delete the journal until then
    (``drained``)."""
    written: list[dict[str, Any]] = []
    with Simulator(SimulatorConfig(submit_latency_s=1.0)) as sim:

        async def go() -> tuple[bool, bool]:
            process = SubmitProcess(
                sim.base_url, sim.api_key, timeout_s=30.0, connections=4, threads=4
            )
            try:
                lines = _lines(_journal(tmp_path), written)
                post = asyncio.ensure_future(
                    process.post(v2_path(REQUEST), v2_body(REQUEST), None, lines)
                )
                while not written:  # the intent is journaled: the POST is leaving
                    await asyncio.sleep(0.01)
                post.cancel()
                early = await process.drained(0.2)
                return early, await process.drained(10.0)
            finally:
                process.close()

        early, late = asyncio.run(go())
    assert (early, late) == (False, True)
    assert [line["event"] for line in written] == ["intent", "submitted"]
    assert written == Journal.read(_journal(tmp_path))


def test_a_retry_cut_off_by_the_process_dying_is_not_sent_again(tmp_path: Path) -> None:
    """A job without an intent (a retry: its intent went with the first try) whose
    process dies with the POST on the wire: Ideogram may have it, so the run must report
    the answer lost (the row ends ``unknown``), never send it again from its threads as
    if nothing had left (ChannelGone)."""
    written: list[dict[str, Any]] = []
    with Simulator(SimulatorConfig(submit_latency_s=5.0)) as sim:

        async def go() -> None:
            process = SubmitProcess(
                sim.base_url, sim.api_key, timeout_s=30.0, connections=4, threads=4
            )
            try:
                lines = replace(_lines(_journal(tmp_path), written), intent=None)
                post = asyncio.ensure_future(
                    process.post(v2_path(REQUEST), v2_body(REQUEST), None, lines)
                )
                while not sim.stats.requests_by_route:
                    await asyncio.sleep(0.01)
                os.kill(process.pid, signal.SIGKILL)
                with pytest.raises(ResponseLost):
                    await post
            finally:
                process.close()

        asyncio.run(go())
    assert written == []


def test_a_compressed_answer_is_read(tmp_path: Path) -> None:
    """An API behind a CDN may gzip its JSON. The process reads the answer decoded, so it
    must not pass on the header saying it is compressed: the run's response decoded it
    again (DecodingError inside the loop's callback) and the submission waited for ever."""
    written: list[dict[str, Any]] = []
    with running_simulator(SimulatorConfig(gzip_json=True)) as sim:
        assert "gzip" in httpx.get(f"{sim.base_url}/sim/stats").headers["content-encoding"]
        response = _post(sim.base_url, sim.api_key, _lines(_journal(tmp_path), written))
    generation_id = response.json()["generation_id"]
    assert [line.get("generation_id") for line in written] == [None, generation_id]

"""Real faults, every row accounted for, billing exactly as expected.

The engine runs as plain Python against the bundled simulator (5xx bursts, 429 storms,
slow generations, truncated downloads), a real TCP proxy on loopback that drops
connections, and a real SeaweedFS server that is stopped in the middle of a batch and
started again. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.ideogram.client import IdeogramClient, RetryPolicy
from ideogram_pipeline.runs.engine import BatchSummary, run_batch
from ideogram_pipeline.runs.retrying import STORAGE_RETRY, StorageRetry, is_storage_outage
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore, ObjectExists, ObjectStore, StorageError
from ideogram_pipeline.storage.s3 import S3Store
from tests.support.seaweed import running_seaweedfs, start_seaweedfs

FAST_RETRY = RetryPolicy(max_attempts=8, base_delay_s=0.05, max_delay_s=0.5)


def _csv(prompts: list[str]) -> bytes:
    lines = ["prompt,seed"] + [f'"{p}",{n}' for n, p in enumerate(prompts)]
    return ("\n".join(lines) + "\n").encode()


def _run(
    sim_or_url: Simulator | str,
    api_key: str,
    store: ObjectStore,
    prompts: list[str],
    *,
    key: str = "faults",
    api_mode: str = "async",
    inflight: int = 6,
    resend_unknown: bool = False,
    settings: Settings | None = None,
    storage_retry: StorageRetry = STORAGE_RETRY,
    **client_options: object,
) -> BatchSummary:
    base_url = sim_or_url if isinstance(sim_or_url, str) else sim_or_url.base_url
    batch = parse_batch(_csv(prompts), key=key)
    settings = settings or load_settings({"IDEOGRAM_STORAGE": store.root})

    async def go() -> BatchSummary:
        async with IdeogramClient(
            base_url, api_key, max_inflight=inflight, retry=FAST_RETRY, **client_options
        ) as client:
            return await run_batch(
                batch,
                client,
                store,
                previous=history.batch_state(settings, store, key),
                api_mode=api_mode,
                flush_every=5,
                resend_unknown=resend_unknown,
                history=HistoryTables(settings),
                storage_retry=storage_retry,
            )

    return asyncio.run(go())


def _statuses(store_root: str) -> dict[int, str]:
    con = history.connect(load_settings({"IDEOGRAM_STORAGE": store_root}))
    try:
        rows = con.execute(
            "SELECT row, string_agg(DISTINCT status, ',') FROM generations GROUP BY row"
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


@pytest.mark.parametrize("api_mode", ["async", "sync"])
@pytest.mark.slow
def test_5xx_bursts_and_429_storms(tmp_path: Path, api_mode: str) -> None:
    """30% server errors and a simulator limit far below what the client believes."""
    config = SimulatorConfig(
        latency_s=0.05, max_inflight=2, server_error_rate=0.3, image_scale=0.25
    )
    prompts = [f"A glass bottle with a tiny ship inside, view {n}" for n in range(20)]
    with running_simulator(config) as sim:
        summary = _run(sim, sim.api_key, LocalStore(tmp_path), prompts, api_mode=api_mode)
        billed = dict(sim.stats.billed_by_prompt_seed)
        assert sim.stats.rate_limited > 0 and sim.stats.max_images_inflight_seen <= 2
    assert summary.stored == 20 and summary.failed == 0
    assert summary.retries["RateLimited"] > 0 and summary.retries["ServerError"] > 0
    assert set(billed.values()) == {1}  # 429 and 5xx are never billed, nothing paid twice
    con = history.connect(load_settings({"IDEOGRAM_STORAGE": str(tmp_path)}))
    retried = con.execute(
        "SELECT count(*) FROM generations WHERE attempts > 1 AND last_error IS NOT NULL"
    ).fetchone()[0]
    con.close()
    assert retried > 0  # per-row attempts and the last retried error are in the metadata


def test_truncated_downloads_are_fetched_again(tmp_path: Path) -> None:
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        summary = _run(
            sim, sim.api_key, LocalStore(tmp_path), ["A kettle on a stove [sim:corrupt]"]
        )
        assert sim.stats.corrupt_downloads == 1
    assert summary.stored == 1 and summary.retries["CorruptImage"] == 1


@contextlib.contextmanager
def _dropping_proxy(target_port: int, drop_every: int) -> Iterator[str]:
    """A loopback TCP proxy that closes every ``drop_every``-th new connection at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    count = 0

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        nonlocal count
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            count += 1
            if count % drop_every == 0:
                client.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                client.close()  # RST before anything reaches the server
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.slow
def test_connection_resets(tmp_path: Path) -> None:
    """Dropped connections on polls and downloads are retried. A dropped generate request is
    ambiguous to the client (it left; did it arrive?), so that row ends ``unknown`` and is
    sent again only with ``resend_unknown``: here the server never saw those requests, so
    resending pays nothing twice."""
    prompts = [f"A red door in a white wall, number {n}" for n in range(12)]
    no_keepalive = {"max_keepalive_connections": 0}  # a new connection per request
    with running_simulator(SimulatorConfig(image_scale=0.25)) as sim:
        port = int(sim.base_url.rsplit(":", 1)[1])
        with _dropping_proxy(port, drop_every=3) as proxy:
            first = _run(
                proxy,
                sim.api_key,
                LocalStore(tmp_path),
                prompts,
                transport=httpx.AsyncHTTPTransport(limits=httpx.Limits(**no_keepalive)),
            )
        assert first.retries["TransportError"] > 0
        assert first.stored + first.unknown == 12 and first.stored > 0
        second = _run(sim, sim.api_key, LocalStore(tmp_path), prompts, resend_unknown=True)
        billed = dict(sim.stats.billed_by_prompt_seed)
    assert second.stored == first.unknown and second.skipped == first.stored
    assert set(_statuses(str(tmp_path)).values()) == {"stored"}
    assert set(billed.values()) == {1}


@pytest.mark.slow
@pytest.mark.parametrize("api_mode", ["async", "sync"])
def test_slow_answers_past_the_timeout(tmp_path: Path, api_mode: str) -> None:
    """async: a slow generation is just polled longer. sync: the answer is lost after the
    request left, so the row is ``unknown`` (possibly billed), never silently resent."""
    config = SimulatorConfig(image_scale=0.25, slow_latency_s=1.5)
    with running_simulator(config) as sim:
        summary = _run(
            sim,
            sim.api_key,
            LocalStore(tmp_path),
            ["A quiet library at night [sim:slow]", "A bowl of lemons"],
            api_mode=api_mode,
            generate_timeout_s=0.5,
        )
        time.sleep(1.6)  # let the abandoned synchronous request finish on the server
        billed = dict(sim.stats.billed_by_prompt_seed)
    statuses = _statuses(str(tmp_path))
    assert statuses[2] == "stored"
    assert statuses[1] == ("stored" if api_mode == "async" else "unknown")
    assert set(billed.values()) == {1}  # each paid exactly once
    assert summary.unknown + summary.stored == 2


@pytest.mark.slow
def test_s3_outage_mid_batch(tmp_path: Path) -> None:
    """SeaweedFS stops in the middle of a batch and comes back: uploads wait it out."""
    with running_seaweedfs(tmp_path / "s3") as first:
        first.create_bucket("outage")
        credentials = (first.access_key, first.secret_key, first.ports)
    # Restart at the same address and data, then stop it again mid-batch below.
    server = start_seaweedfs(
        tmp_path / "s3", access_key=credentials[0], secret_key=credentials[1], ports=credentials[2]
    )
    settings = load_settings({"IDEOGRAM_STORAGE": "s3://outage/x", **server.env()})
    store = S3Store.from_settings(settings)
    prompts = [f"A lighthouse keeper's breakfast, variation {n}" for n in range(16)]
    config = SimulatorConfig(latency_s=0.2, max_inflight=4, image_scale=0.25)
    restarted: list[object] = []

    def outage() -> None:
        # Once the first image is up: the batch is under way, with uploads to come.
        deadline = time.monotonic() + 60
        while not any(True for _ in store.list("images/")) and time.monotonic() < deadline:
            time.sleep(0.02)
        server.stop()
        time.sleep(2.0)
        restarted.append(
            start_seaweedfs(
                tmp_path / "s3",
                access_key=credentials[0],
                secret_key=credentials[1],
                ports=credentials[2],
            )
        )

    try:
        with running_simulator(config) as sim:
            thread = threading.Thread(target=outage)
            thread.start()
            summary = _run(sim, sim.api_key, store, prompts, inflight=4, settings=settings)
            thread.join()
            billed = dict(sim.stats.billed_by_prompt_seed)
        assert summary.stored == 16 and summary.failed == 0
        assert summary.retries["StorageError"] > 0  # the outage really hit uploads
        assert set(billed.values()) == {1}
        con = history.connect(settings, store)
        keys = {r[0] for r in con.execute("SELECT image_key FROM generations").fetchall()}
        con.close()
        listed = {info.key for info in store.list("images/")}
        assert listed == keys  # objects and metadata agree one to one
    finally:
        for srv in restarted:
            srv.stop()  # type: ignore[attr-defined]
        server.stop()


# -- storage retries: outages waited out, bugs raised at once -------------------------------

QUICK_STORAGE_RETRY = StorageRetry(attempts=4, first_delay_s=0.01, max_delay_s=0.05)


class _FailingStore(LocalStore):
    """A real local store whose first ``failures`` writes under ``prefix`` raise ``error``."""

    def __init__(self, root: Path, prefix: str, error: Exception, failures: int) -> None:
        super().__init__(root)
        self.prefix, self.error, self.failures = prefix, error, failures
        self.tries: list[str] = []

    def put_bytes(self, key: str, data: bytes, **options: Any) -> None:
        if key.startswith(self.prefix):
            self.tries.append(key)
            if len(self.tries) <= self.failures:
                raise self.error
        super().put_bytes(key, data, **options)


def test_a_programming_error_in_storage_fails_at_once(tmp_path: Path) -> None:
    """A bug (here a TypeError from the store) is not retried: the run stops on the first
    try with the error's own traceback, not after a minute of backoff."""
    store = _FailingStore(tmp_path, "images/", TypeError("put_bytes() got a bad argument"), 99)
    with running_simulator(SimulatorConfig(latency_s=0.0, image_scale=0.25)) as sim:
        started = time.monotonic()
        with pytest.raises(TypeError, match="bad argument") as raised:
            _run(sim, sim.api_key, store, ["A paper boat on a puddle"])
    assert len(store.tries) == 1  # one try, no retry
    assert time.monotonic() - started < STORAGE_RETRY.first_delay_s * 8
    assert raised.traceback[-1].name == "put_bytes"  # raised where the bug is


def test_a_storage_outage_is_waited_out(tmp_path: Path) -> None:
    """Image uploads wait out refused writes, counted as retries. (A local root's ledger
    entries are its journal while the run lasts; the copies made at its end wait out an
    outage the same way: ``test_journal.py``.)"""
    store = _FailingStore(tmp_path, "images/", ConnectionRefusedError("store restarting"), 2)
    with running_simulator(SimulatorConfig(latency_s=0.0, image_scale=0.25)) as sim:
        summary = _run(
            sim,
            sim.api_key,
            store,
            ["A paper boat on a puddle"],
            storage_retry=QUICK_STORAGE_RETRY,
        )
        billed = dict(sim.stats.billed_by_prompt_seed)
    assert summary.stored == 1 and summary.failed == 0
    assert summary.retries["StorageError"] == 2
    assert len(store.tries) > 2 and set(billed.values()) == {1}
    assert [info.key for info in store.list("images/")]  # the image really landed


def test_an_outage_longer_than_the_retries_fails_the_image_not_the_run(tmp_path: Path) -> None:
    store = _FailingStore(tmp_path, "images/", StorageError("bucket unreachable"), 99)
    with running_simulator(SimulatorConfig(latency_s=0.0, image_scale=0.25)) as sim:
        summary = _run(
            sim, sim.api_key, store, ["A paper boat on a puddle"], storage_retry=QUICK_STORAGE_RETRY
        )
    assert summary.failed == 1 and len(store.tries) == QUICK_STORAGE_RETRY.attempts
    con = history.connect(load_settings({"IDEOGRAM_STORAGE": str(tmp_path)}))
    row = con.execute("SELECT failure_kind, last_error FROM generations").fetchone()
    con.close()
    assert row == ("storage", "StorageError: bucket unreachable")


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (StorageError("503 Slow Down"), True),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (ObjectExists("other bytes at the key"), False),
        (TypeError("bad argument"), False),
        (KeyError("seed"), False),
    ],
)
def test_only_storage_and_transport_errors_are_outages(error: Exception, retried: bool) -> None:
    assert is_storage_outage(error) is retried

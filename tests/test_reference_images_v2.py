"""Reference-image rows on Ideogram's v2 API (issue 18, point 5).

In async mode a row with style references goes to ``POST /v2/image/generate/ideogram-3``
and a row with a character reference to ``.../ideogram-3-character``, as multipart/form-data
with ``async=true``, so it gets a generation id like every other async row: a crash after
the id is recorded costs a poll, not a second payment or an ``unknown`` row. A row mixing
both kinds stays on ``POST /v1/ideogram-v3/generate`` (no v2 path takes both).

Real components: PNGs written by Pillow, the bundled simulator over loopback (its
``requests_by_route`` counter says where each request went and in which encoding; its
billing counter hashes each image part's bytes into the body hash), a local storage root,
the real ledger and journal. The crash is either the client's own ``on_submitted`` hook
stopping the "run" right after it journaled the id, as a kill at that moment would, or a
real ``ideogram-pipeline run`` subprocess SIGKILLed (``tests/test_crash_recovery.py``'s
helper) once its journal holds the ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import Batch, parse_batch
from ideogram_pipeline.batches.references import resolve_references
from ideogram_pipeline.history.reproduce import plan, reproduce
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.requests import fits_v2, v2_multipart, v2_path
from ideogram_pipeline.runs.journal import Journal, journal_directory
from ideogram_pipeline.runs.ledger import Ledger, new_attempt_id
from ideogram_pipeline.runs.runner import execute_batch
from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import ObjectStore, open_store
from tests.conftest import make_env
from tests.support.cli_runs import run_and_kill

V2_STYLE = "POST /v2/image/generate/ideogram-3 multipart/form-data"
V2_CHARACTER = "POST /v2/image/generate/ideogram-3-character multipart/form-data"
V2_JSON = "POST /v2/image/generate/ideogram-3 application/json"
V1_MULTIPART = "POST /v1/ideogram-v3/generate multipart/form-data"
HEADER = "prompt,seed,style_reference_images,character_reference_images,character_reference_mask"


@pytest.fixture(scope="module")
def simulator() -> Simulator:
    with running_simulator(SimulatorConfig(image_scale=0.25, latency_s=0.05)) as sim:
        yield sim


def _png(path: Path, size: tuple[int, int] = (64, 48), colour: int = 80, mode: str = "RGB") -> Path:
    Image.new(mode, size, colour if mode == "L" else (colour, 120, 200)).save(path)
    return path


def _settings(simulator: Simulator, tmp_path: Path, api_mode: str = "async") -> Settings:
    return load_settings(
        {
            "IDEOGRAM_STORAGE": str(tmp_path / "root"),
            "IDEOGRAM_API_KEY": simulator.api_key,
            "IDEOGRAM_BASE_URL": simulator.base_url,
            "IDEOGRAM_API_MODE": api_mode,
        }
    )


def _images(folder: Path) -> None:
    _png(folder / "style.png")
    _png(folder / "face.png", (64, 64), 30)
    _png(folder / "mask.png", (64, 64), 255, mode="L")


def _batch(folder: Path, key: str, *lines: str) -> Batch:
    text = "\n".join([HEADER, *lines]) + "\n"
    source = folder / f"{key}.csv"
    source.write_text(text, encoding="utf-8")
    return parse_batch(text.encode("utf-8"), source=str(source), key=key)


def _routes(simulator: Simulator, before: Counter[str]) -> Counter[str]:
    """POSTs by route since ``before`` (the simulator is shared by this module's tests)."""
    return simulator.stats.requests_by_route - before


def _generations(settings: Settings, store: ObjectStore) -> list[tuple[Any, ...]]:
    con = history.connect(settings, store)
    try:
        return con.execute(
            "SELECT row, status, generation_id, reference_roles, cost_usd, id "
            "FROM generations ORDER BY row"
        ).fetchall()
    finally:
        con.close()


def test_async_mode_sends_reference_rows_to_v2_as_multipart(
    simulator: Simulator, tmp_path: Path
) -> None:
    settings = _settings(simulator, tmp_path)
    store = open_store(settings)
    _images(tmp_path)
    batch = _batch(
        tmp_path,
        "refs",
        "A brand poster,31,style.png,,",
        "Our mascot surfing,32,,face.png,mask.png",
        "Our mascot in our style,33,style.png,face.png,",  # both kinds: no v2 path takes them
        "A plain sea,34,,,",
    )
    routes_before = Counter(simulator.stats.requests_by_route)
    billed_before = simulator.stats.billed_usd
    summary = execute_batch(batch, settings, store=store)
    assert (summary.stored, summary.failed, summary.rejected) == (4, 0, 0)
    assert simulator.stats.invalid_requests == []
    assert _routes(simulator, routes_before) == Counter(
        {V2_STYLE: 1, V2_CHARACTER: 1, V1_MULTIPART: 1, V2_JSON: 1}
    )
    # 0.06 each for the style and plain rows, 0.15 each for the two character rows.
    assert round(simulator.stats.billed_usd - billed_before, 4) == 0.42
    poster, mascot, mixed, plain = _generations(settings, store)
    assert [row[1] for row in (poster, mascot, mixed, plain)] == ["stored"] * 4
    # Asynchronous rows carry the generation id that made them; the v1 row has none.
    assert poster[2] and mascot[2] and plain[2] and mixed[2] is None
    assert poster[3] == ["style"] and mascot[3] == ["character", "character_mask"]
    assert (poster[4], mascot[4], mixed[4]) == (0.06, 0.15, 0.15)

    # Reproduce goes the same way and sends the same bytes: the billed bodies repeat.
    (tmp_path / "face.png").unlink()  # the stored copy is what is sent
    bodies_before = Counter(simulator.stats.billed_by_body_hash)
    routes_before = Counter(simulator.stats.requests_by_route)
    con = history.connect(settings, store)
    try:
        planned = plan(con, ids=[poster[5], mascot[5]])
    finally:
        con.close()
    result = reproduce(settings, store, planned, label="refs-again")
    assert all(item.identical for item in result.items)
    assert _routes(simulator, routes_before) == Counter({V2_STYLE: 1, V2_CHARACTER: 1})
    again = simulator.stats.billed_by_body_hash - bodies_before
    assert len(again) == 2 and set(again) <= set(bodies_before)


def test_sync_mode_keeps_reference_rows_on_v1(simulator: Simulator, tmp_path: Path) -> None:
    settings = _settings(simulator, tmp_path, api_mode="sync")
    store = open_store(settings)
    _images(tmp_path)
    batch = _batch(
        tmp_path, "sync", "A brand poster,41,style.png,,", "Our mascot,42,,face.png,mask.png"
    )
    routes_before = Counter(simulator.stats.requests_by_route)
    summary = execute_batch(batch, settings, store=store)
    assert summary.stored == 2
    assert _routes(simulator, routes_before) == Counter({V1_MULTIPART: 2})


def test_routing_picks_the_v2_path_by_the_references(tmp_path: Path) -> None:
    settings = load_settings({"IDEOGRAM_STORAGE": str(tmp_path / "root")})
    store = open_store(settings)
    _images(tmp_path)
    batch = _batch(
        tmp_path,
        "route",
        "a,1,style.png,,",
        "b,2,,face.png,",
        "c,3,,face.png,mask.png",
        "d,4,style.png,face.png,",
    )
    rows = resolve_references(batch, settings, store).rows
    assert all(isinstance(row, GenerationRequest) for row in rows), rows
    style, character, masked, mixed = (row for row in rows if isinstance(row, GenerationRequest))
    assert v2_path(style) == "/v2/image/generate/ideogram-3"
    assert v2_path(character) == v2_path(masked) == "/v2/image/generate/ideogram-3-character"
    assert [fits_v2(row) for row in (style, character, masked, mixed)] == [True, True, True, False]
    parts = v2_multipart(masked, store.get_bytes)
    assert ("async", (None, "true")) in parts
    files = [(name, value[0]) for name, value in parts if value[0] is not None]
    assert [name for name, _ in files] == [
        "character_reference_images",
        "character_reference_images_mask",
    ]
    face_sha = hashlib.sha256((tmp_path / "face.png").read_bytes()).hexdigest()
    assert files[0][1] == f"{face_sha}.png"


def _post(simulator: Simulator, path: str, parts: list[Any]) -> httpx.Response:
    return httpx.post(
        f"{simulator.base_url}{path}",
        files=parts,
        headers={"Api-Key": simulator.api_key},
        timeout=30,
    )


def test_the_simulator_refuses_bad_image_parts_naming_the_part(
    simulator: Simulator, tmp_path: Path
) -> None:
    png = _png(tmp_path / "ok.png").read_bytes()
    face = _png(tmp_path / "face.png", (64, 64), 30).read_bytes()
    fields: list[Any] = [
        ("prompt", (None, "A bad part")),
        ("rendering_speed", (None, "turbo")),
        ("async", (None, "true")),
    ]
    style = "/v2/image/generate/ideogram-3"
    character = "/v2/image/generate/ideogram-3-character"
    huge = b"\x89PNG\r\n\x1a\n" + bytes(10 * 1024 * 1024)  # a PNG signature, 10 MB of nothing
    cases: list[tuple[str, list[Any], str]] = [
        (
            style,
            [*fields, ("style_reference_images", ("notes.png", b"just text", "image/png"))],
            "style_reference_images: image 1 is not PNG, JPEG or WebP",
        ),
        (
            style,
            [*fields, ("style_reference_images", (None, "https://example.com/a.png"))],
            "style_reference_images: must be image file parts, not text",
        ),
        (
            style,
            [*fields, ("style_reference_images", ("big.png", huge, "image/png"))],
            "style_reference_images: the images total 10,485,768 bytes; the limit is 10,485,760",
        ),
        (
            style,
            [*fields, ("character_reference_images", ("face.png", face, "image/png"))],
            "character_reference_images: not accepted by ideogram-3",
        ),
        (
            character,
            [*fields, ("style_reference_images", ("ok.png", png, "image/png"))],
            "style_reference_images: not accepted by ideogram-3-character",
        ),
        (character, fields, "character_reference_images: required by ideogram-3-character"),
        (
            character,
            [
                *fields,
                ("character_reference_images", ("a.png", face, "image/png")),
                ("character_reference_images", ("b.png", face, "image/png")),
            ],
            "character_reference_images: 2 images; Ideogram takes 1",
        ),
        (
            character,
            [
                *fields,
                ("character_reference_images", ("a.png", face, "image/png")),
                ("character_reference_images_mask", ("m.png", png, "image/png")),
            ],
            "character_reference_images_mask: mask 1 is 64x48 but its character image is 64x64",
        ),
        (
            style,
            [*fields, ("negative_prompt", ("ok.png", png, "image/png"))],
            "negative_prompt: a file part, but only",
        ),
        # The other fields are checked as in a JSON body, typed from their form strings.
        (
            style,
            [("prompt", (None, "x")), ("async", (None, "maybe")), ("seed", (None, "-1"))],
            "async: must be a boolean",
        ),
        (
            style,
            [("prompt", (None, "x")), ("rendering_speed", (None, "TURBO"))],
            "rendering_speed: 'TURBO' is not one of",
        ),
    ]
    billed_before = simulator.stats.billed_usd
    for path, parts, needle in cases:
        answer = _post(simulator, path, parts)
        assert answer.status_code == 400, (needle, answer.text)
        assert needle in answer.json()["error"], (needle, answer.json())
    assert simulator.stats.billed_usd == billed_before
    # The same parts, put right, are accepted: a generation id, polled to completion.
    good = _post(
        simulator,
        character,
        [*fields, ("character_reference_images", ("a.png", face, "image/png"))],
    )
    assert good.status_code == 200, good.text
    generation_id = good.json()["generation_id"]
    assert set(good.json()) == {"generation_id"}  # no images until it completes
    status = "pending"
    while status == "pending":  # the simulator completes it after its latency (50 ms)
        polled = httpx.get(
            f"{simulator.base_url}/v2/generations/{generation_id}",
            headers={"Api-Key": simulator.api_key},
        ).json()
        status = polled["status"]
        time.sleep(0.02)  # pacing only, well inside the simulator's poll limit
    assert status == "completed" and len(polled["data"]) == 1
    # Billed at completion, at the character product's price (TURBO: 0.10).
    assert round(simulator.stats.billed_usd - billed_before, 4) == 0.10


class _Killed(Exception):
    """The run dies right after journaling the generation id."""


def test_a_resumed_reference_row_is_polled_not_resent(simulator: Simulator, tmp_path: Path) -> None:
    settings = _settings(simulator, tmp_path)
    store = open_store(settings)
    _images(tmp_path)
    batch = _batch(tmp_path, "resume", "Our mascot sailing,51,,face.png,mask.png")
    (request,) = resolve_references(batch, settings, store).rows
    assert isinstance(request, GenerationRequest)

    # The first run: intent, submission, the id journaled, then the process dies.
    killed = Ledger(store, batch.key, Journal(journal_directory(store), batch.key))
    attempt = new_attempt_id()
    killed.journal_event(request, attempt, "intent", mode="async")
    recorded: list[str] = []

    async def first_run() -> None:
        async with IdeogramClient(simulator.base_url, simulator.api_key) as client:
            client.read_reference = store.get_bytes

            def on_submitted(generation_id: str) -> None:  # on the submit thread
                killed.journal_event(request, attempt, "submitted", generation_id=generation_id)
                recorded.append(generation_id)
                raise _Killed

            await client.generate_async(request, on_submitted)

    routes_before = Counter(simulator.stats.requests_by_route)
    billed_before = simulator.stats.billed_requests
    with pytest.raises(_Killed):
        asyncio.run(first_run())
    assert killed.journal is not None
    killed.journal.close()
    assert _routes(simulator, routes_before) == Counter({V2_CHARACTER: 1})

    # The next run polls the recorded id: nothing is submitted, nothing paid twice.
    summary = execute_batch(batch, settings, store=store)
    assert (summary.stored, summary.resumed) == (1, 1)
    assert _routes(simulator, routes_before) == Counter({V2_CHARACTER: 1})
    assert simulator.stats.billed_requests - billed_before == 1
    assert simulator.stats.billed_by_prompt_seed[("Our mascot sailing", 51)] == 1
    [(row, status, generation_id, roles, cost, _id)] = _generations(settings, store)
    assert (row, status, generation_id) == (1, "stored", recorded[0])
    assert roles == ["character", "character_mask"] and cost == 0.15


def test_an_intent_without_a_generation_id_is_unknown_not_resent(
    simulator: Simulator, tmp_path: Path
) -> None:
    """Killed between the intent and Ideogram's answer: as for any async row, the row may
    have been billed, so it ends ``unknown`` and is not sent again unasked."""
    settings = _settings(simulator, tmp_path)
    store = open_store(settings)
    _images(tmp_path)
    batch = _batch(tmp_path, "lost", "A brand banner,61,style.png,,")
    (request,) = resolve_references(batch, settings, store).rows
    assert isinstance(request, GenerationRequest)
    killed = Ledger(store, batch.key, Journal(journal_directory(store), batch.key))
    killed.journal_event(request, new_attempt_id(), "intent", mode="async")
    assert killed.journal is not None
    killed.journal.close()
    routes_before = Counter(simulator.stats.requests_by_route)
    execute_batch(batch, settings, store=store)
    assert _routes(simulator, routes_before) == Counter()
    [(_row, status, generation_id, _roles, _cost, _id)] = _generations(settings, store)
    assert (status, generation_id) == ("unknown", None)


def test_a_transparent_row_goes_to_its_v2_path_too(simulator: Simulator, tmp_path: Path) -> None:
    """Point 5 for the other routing field: ``transparent=true`` in async mode goes to
    ``ideogram-3-transparent``, asynchronously, and is billed and stored as transparent."""
    settings = _settings(simulator, tmp_path)
    store = open_store(settings)
    text = "prompt,seed,transparent\nA glass mug,71,true\n"
    batch = parse_batch(text.encode(), source=str(tmp_path / "t.csv"), key="transparent")
    routes_before = Counter(simulator.stats.requests_by_route)
    assert execute_batch(batch, settings, store=store).stored == 1
    assert _routes(simulator, routes_before) == Counter(
        {"POST /v2/image/generate/ideogram-3-transparent application/json": 1}
    )
    [(_row, status, generation_id, _roles, cost, _id)] = _generations(settings, store)
    assert status == "stored" and generation_id and cost == 0.07


def _submitted_in_journal(storage: Path, batch: str) -> int:
    """Generation ids the running batch has journaled so far (its durable record)."""
    lines = 0
    for path in (storage / "journal" / batch).glob("*.jsonl"):
        lines += path.read_text(encoding="utf-8", errors="replace").count('"event":"submitted"')
    return lines


@pytest.mark.slow
def test_killed_after_the_ids_are_journaled_the_rerun_polls_them(tmp_path: Path) -> None:
    """The real thing, end to end: ``ideogram-pipeline run`` in a subprocess, SIGKILLed
    once it has journaled both reference rows' generation ids (the generations still
    running, ``[sim:slow]``); the next run collects both without submitting again."""
    _images(tmp_path)
    csv = tmp_path / "killed.csv"
    csv.write_text(
        f"{HEADER}\n"
        "A brand poster [sim:slow],81,style.png,,\n"
        "Our mascot rowing [sim:slow],82,,face.png,mask.png\n",
        encoding="utf-8",
    )
    storage = tmp_path / "storage"
    (tmp_path / "home").mkdir()
    run = [sys.executable, "-c", "from ideogram_pipeline.cli import main; main()", "run"]
    cmd = [*run, str(csv), "--batch", "killed"]
    with running_simulator(SimulatorConfig(image_scale=0.25, slow_latency_s=3.0)) as sim:
        env = make_env(
            storage=str(storage),
            IDEOGRAM_API_KEY=sim.api_key,
            IDEOGRAM_BASE_URL=sim.base_url,
            IDEOGRAM_API_MODE="async",
            DAGSTER_HOME=str(tmp_path / "home"),
        )
        killed = run_and_kill(cmd, env, lambda: _submitted_in_journal(storage, "killed") >= 2)
        assert killed, "the batch finished before both ids were journaled"
        assert sim.stats.requests_by_route[V2_STYLE] == 1
        assert sim.stats.requests_by_route[V2_CHARACTER] == 1
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        routes = Counter(sim.stats.requests_by_route)
        billed = dict(sim.stats.billed_by_prompt_seed)
    assert routes[V2_STYLE] == 1 and routes[V2_CHARACTER] == 1  # polled, not resent
    assert billed == {("A brand poster [sim:slow]", 81): 1, ("Our mascot rowing [sim:slow]", 82): 1}
    settings = load_settings(env)
    rows = _generations(settings, open_store(settings))
    assert [(row[0], row[1]) for row in rows] == [(1, "stored"), (2, "stored")]
    assert all(row[2] for row in rows)

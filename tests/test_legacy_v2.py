"""V_2 and V_2A rows go to the v2 API asynchronously, so they get the generation-id guarantee.

Against the bundled simulator on loopback (which validates every v2 body against the
capability table's routes and bills per image): the rows' ledger records a generation id,
a run stopped after submission (the client's stop switch, as SIGINT throws it) is resumed
by the next run by polling that id, and nothing is paid twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import parse_batch
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.requests import fits_v2, v2_body, v2_path
from ideogram_pipeline.runs.engine import BatchInterrupted, BatchSummary, run_batch
from ideogram_pipeline.runs.ledger import Ledger
from ideogram_pipeline.settings import load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from ideogram_pipeline.storage import LocalStore

CSV = (
    b"prompt,model,seed,aspect_ratio,style_type,negative_prompt\n"
    b'"A brass diving helmet",V_2,11,16:9,RENDER_3D,blurry\n'
    b'"A kite over dunes",V_2A,12,1:1,ANIME,\n'
)


def test_v2_bodies_use_v2_names_and_lowercase_enums() -> None:
    v2 = GenerationRequest(
        row=1, prompt="p", model="V_2", magic_prompt="OFF", style_type="RENDER_3D", seed=5
    )
    assert v2_path(v2) == "/v2/image/generate/ideogram-2"
    assert v2_body(v2) == {
        "prompt": "p",
        "num_images": 1,
        "seed": 5,
        "magic_prompt": "off",
        "style_type": "render_3d",
        "async": True,
    }
    v2a = GenerationRequest(row=1, prompt="p", model="V_2A", aspect_ratio="16x9")
    assert v2_path(v2a) == "/v2/image/generate/ideogram-2a"
    assert v2_body(v2a)["aspect_ratio"] == "16x9"
    # ideogram-2a takes no negative prompt; a v1 resolution has no v2 field: both stay sync.
    assert not fits_v2(GenerationRequest(row=1, prompt="p", model="V_2", resolution="1024x1024"))
    for model in ("V_2_TURBO", "V_2A_TURBO", "V_1"):
        assert not fits_v2(GenerationRequest(row=1, prompt="p", model=model))


def _run(sim: Simulator, root: Path, *, stop_after_submit: bool = False) -> BatchSummary:
    batch = parse_batch(CSV, key="legacy")
    settings = load_settings({"IDEOGRAM_STORAGE": str(root)})
    store = LocalStore(root)

    async def go() -> BatchSummary:
        async with IdeogramClient(sim.base_url, sim.api_key) as client:
            if stop_after_submit:

                async def stop_once_submitted() -> None:
                    while sim.stats.images_inflight < 2:  # both accepted, both generating
                        await asyncio.sleep(0.005)
                    client.stop.throw("test stop")

                watcher = asyncio.create_task(stop_once_submitted())
            try:
                return await run_batch(
                    batch,
                    client,
                    store,
                    previous=history.batch_state(settings, store, "legacy"),
                    api_mode="async",
                    history=HistoryTables(settings),
                )
            finally:
                if stop_after_submit:
                    watcher.cancel()

    return asyncio.run(go())


def test_legacy_rows_are_resumed_by_polling_their_generation_ids(tmp_path: Path) -> None:
    with running_simulator(SimulatorConfig(latency_s=1.0, image_scale=0.25)) as sim:
        with pytest.raises(BatchInterrupted) as stopped:
            _run(sim, tmp_path, stop_after_submit=True)
        assert stopped.value.summary.left_submitted == 2
        entries = Ledger(LocalStore(tmp_path), "legacy").load()
        assert sorted(e.mode for e in entries.values()) == ["async", "async"]
        assert all(e.generation_id for e in entries.values())
        assert sim.stats.billed_images == 0  # stopped while the generations ran

        summary = _run(sim, tmp_path)
        billed = dict(sim.stats.billed_by_prompt_seed)
    assert summary.stored == 2 and summary.resumed == 2
    assert billed == {("A brass diving helmet", 11): 1, ("A kite over dunes", 12): 1}

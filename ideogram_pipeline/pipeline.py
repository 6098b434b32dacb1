"""Run one batch from a CSV path with plain Python: what the Dagster asset and tests call.

This is where settings meet components: the store is preflighted before any request is
sent, the bundled simulator is started when no API key is set, and the previous state of
the batch is read so that nothing already paid for is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ideogram_pipeline import history
from ideogram_pipeline.batches import Batch, load_batch
from ideogram_pipeline.engine import BatchSummary, ProgressCallback, run_batch
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store

if TYPE_CHECKING:
    from ideogram_pipeline.ideogram.simulator import SimulatorConfig

__all__ = ["ApiEndpoint", "api_endpoint", "execute_batch", "simulator_config_from_env"]

#: Latency of the embedded simulator: enough to look real in a demo, short enough to be quick.
DEFAULT_SIMULATOR_LATENCY_S = 0.3


@dataclass(frozen=True)
class ApiEndpoint:
    base_url: str
    api_key: str = ""
    simulated: bool = False

    def __repr__(self) -> str:  # the key never shows in a repr, a log or a traceback
        return f"ApiEndpoint(base_url={self.base_url!r}, simulated={self.simulated})"


def simulator_config_from_env(settings: Settings) -> SimulatorConfig:
    """The embedded simulator's switches; ``IDEOGRAM_SIMULATOR_*`` variables tune them."""
    from ideogram_pipeline.ideogram.simulator import SimulatorConfig

    latency = float(os.environ.get("IDEOGRAM_SIMULATOR_LATENCY", DEFAULT_SIMULATOR_LATENCY_S))
    scale = float(os.environ.get("IDEOGRAM_SIMULATOR_IMAGE_SCALE", "1.0"))
    return SimulatorConfig(latency_s=latency, max_inflight=settings.max_inflight, image_scale=scale)


@contextlib.contextmanager
def api_endpoint(settings: Settings) -> Iterator[ApiEndpoint]:
    """The real API when a key is set; otherwise a bundled simulator for the block's life."""
    if not settings.simulated:
        yield ApiEndpoint(settings.base_url, settings.api_key or "", simulated=False)
        return
    from ideogram_pipeline.ideogram.simulator import running_simulator

    with running_simulator(simulator_config_from_env(settings)) as simulator:
        yield ApiEndpoint(simulator.base_url, simulator.api_key, simulated=True)


def execute_batch(
    batch: Batch,
    settings: Settings,
    *,
    store: ObjectStore | None = None,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> BatchSummary:
    """Preflight the store, then generate every row of ``batch`` that is not done yet."""
    store = store or open_store(settings)
    store.preflight()
    previous = history.batch_state(settings, store, batch.key)
    with api_endpoint(settings) as endpoint:

        async def go() -> BatchSummary:
            async with IdeogramClient(
                endpoint.base_url, endpoint.api_key, max_inflight=settings.max_inflight
            ) as client:
                return await run_batch(
                    batch,
                    client,
                    store,
                    previous=previous,
                    run_id=run_id,
                    simulated=endpoint.simulated,
                    progress=progress,
                )

        return asyncio.run(go())


def execute_csv(path: str, settings: Settings, key: str | None = None) -> BatchSummary:
    """Convenience for scripts and benchmarks: load the CSV and run it."""
    return execute_batch(load_batch(path, key=key), settings)

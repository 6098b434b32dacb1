"""Run one batch from a CSV path with plain Python: what the Dagster asset and tests call.

This is where settings meet components: the store is preflighted before any request is
sent, the bundled simulator is started when no API key is set, and the previous state of
the batch is read so that nothing already paid for is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ideogram_pipeline.batches.files import Batch, load_batch
from ideogram_pipeline.batches.references import resolve_references
from ideogram_pipeline.batches.sources import resolve_sources
from ideogram_pipeline.history.duplicates import existing_images
from ideogram_pipeline.history.tables import HistoryTables
from ideogram_pipeline.ideogram.client import POLL_RATE_PER_S, IdeogramClient
from ideogram_pipeline.ideogram.operations import operation
from ideogram_pipeline.ideogram.url_policy import UrlPolicy
from ideogram_pipeline.images.contact_sheets import SheetTiles
from ideogram_pipeline.runs.cost_guard import (
    CostEstimate,
    check_budget,
    estimate_cost,
    quote_unit_prices,
)
from ideogram_pipeline.runs.engine import run_batch
from ideogram_pipeline.runs.lease import LeaseHolder, acquire_lease
from ideogram_pipeline.runs.malloc_tuning import pin_mmap_threshold, use_system_allocator_for_arrow
from ideogram_pipeline.runs.records import ExtraFields, state_for_run
from ideogram_pipeline.runs.row_matching import match_rows, send_plan
from ideogram_pipeline.runs.submit_process import SubmitProcess
from ideogram_pipeline.runs.summary import BatchSummary, ProgressCallback
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage import ObjectStore, open_store

if TYPE_CHECKING:
    from ideogram_pipeline.simulator.server import SimulatorConfig

__all__ = [
    "ApiEndpoint",
    "api_endpoint",
    "estimate_batch",
    "execute_batch",
    "simulator_config_from_env",
    "tune_process_memory",
]

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
    from ideogram_pipeline.simulator.server import SimulatorConfig

    latency = float(os.environ.get("IDEOGRAM_SIMULATOR_LATENCY", DEFAULT_SIMULATOR_LATENCY_S))
    scale = float(os.environ.get("IDEOGRAM_SIMULATOR_IMAGE_SCALE", "1.0"))
    return SimulatorConfig(latency_s=latency, max_inflight=settings.max_inflight, image_scale=scale)


@contextlib.contextmanager
def api_endpoint(settings: Settings) -> Iterator[ApiEndpoint]:
    """The real API when a key is set; a simulator the person started and named with
    ``IDEOGRAM_SIMULATOR=1`` and ``IDEOGRAM_BASE_URL``; otherwise a bundled simulator for
    the block's life. Only the first makes records that count as real."""
    if not settings.simulated:
        yield ApiEndpoint(settings.base_url, settings.api_key or "", simulated=False)
        return
    from ideogram_pipeline.simulator.server import running_simulator
    from ideogram_pipeline.simulator.state import DEFAULT_SIMULATOR_API_KEY

    if settings.simulator_at_base_url:
        key = settings.api_key or DEFAULT_SIMULATOR_API_KEY
        yield ApiEndpoint(settings.base_url, key, simulated=True)
        return

    with running_simulator(simulator_config_from_env(settings)) as simulator:
        yield ApiEndpoint(simulator.base_url, simulator.api_key, simulated=True)


def tune_process_memory() -> None:
    """Process setup for a process that runs batches: image buffers and Parquet flushes
    give their memory back, so a long batch stays flat (``malloc_tuning.py``).

    It changes process-wide allocator settings, so only entry points call it (the CLI's
    ``run``, a Dagster op's process), never library code. Idempotent.
    """
    pin_mmap_threshold()
    use_system_allocator_for_arrow()


def execute_batch(
    batch: Batch,
    settings: Settings,
    *,
    store: ObjectStore | None = None,
    run_id: str | None = None,
    progress: ProgressCallback | None = None,
    max_cost_usd: float | None = None,
    dry_run: bool = False,
    force: bool = False,
    extra_fields: ExtraFields | None = None,
    resend_unknown: bool = False,
    on_takeover: Callable[[LeaseHolder], None] | None = None,
    tiles: SheetTiles | None = None,
) -> BatchSummary:
    """Preflight the store, then generate every row of ``batch`` that is not done yet.

    The batch's lease is taken first (``lease.py``): another live runner of it raises
    :class:`~ideogram_pipeline.runs.lease.BatchLeased` before anything is sent. When the
    lease is taken over from a dead runner, ``on_takeover`` is told who it was (the Dagster
    asset marks that runner's run failed).

    Rows are known by their content, not their line (``row_matching.py``): a row that
    moved in the file keeps what it was paid for, and ``generations`` follows the file.
    Rows whose exact request (explicit seed) is already stored anywhere in the history are
    linked to it instead of paid again, unless ``force`` (see ``duplicates.py``);
    ``extra_fields`` adds columns to records by ``(row, image_index)`` (``reproduce.py``);
    ``tiles`` receives contact-sheet thumbnails as images are stored (``run_batch``).

    The cost of the rows that will be sent (``will_send.py``: not those the ledger
    recovers or a duplicate links) is estimated first (``summary.estimated_cost_usd``). With
    ``dry_run`` nothing is sent and the summary only carries the estimate; with
    ``max_cost_usd`` an estimate above it raises
    :class:`~ideogram_pipeline.runs.cost_guard.CostLimitExceeded`     before any request.
    """
    store = store or open_store(settings)
    store.preflight()
    with contextlib.ExitStack() as held:
        on_lost: list[Callable[[], object]] = []

        def lost() -> None:
            for stop in on_lost:
                stop()

        if not dry_run:
            # One runner per batch, wherever the run comes from: taken before the history
            # is read, so the state this run resumes from is final (lease.py).
            lease = held.enter_context(
                acquire_lease(store, batch.key, run_id or "no-run-id", on_lost=lost)
            )
            if lease.taken_over_from is not None and on_takeover is not None:
                on_takeover(lease.taken_over_from)
        return _execute_leased(
            batch,
            settings,
            store,
            on_lost,
            run_id=run_id,
            progress=progress,
            max_cost_usd=max_cost_usd,
            dry_run=dry_run,
            force=force,
            extra_fields=extra_fields,
            resend_unknown=resend_unknown,
            tiles=tiles,
        )


def _execute_leased(
    batch: Batch,
    settings: Settings,
    store: ObjectStore,
    on_lost: list[Callable[[], object]],
    *,
    run_id: str | None,
    progress: ProgressCallback | None,
    max_cost_usd: float | None,
    dry_run: bool,
    force: bool,
    extra_fields: ExtraFields | None,
    resend_unknown: bool,
    tiles: SheetTiles | None = None,
) -> BatchSummary:
    """:func:`execute_batch` once the batch is this runner's: ``on_lost`` receives what
    stops the run should the lease be taken over (this runner fell silent too long)."""
    # Reference images are read, checked and stored before anything is sent (issue 18).
    batch = resolve_references(batch, settings, store)
    # So are the images operation rows work on (issue 19): a source gone is a rejected row.
    batch = resolve_sources(batch, settings, store)
    # Rows are matched to the history by content, not line (row_matching.py).
    matched = match_rows(settings, store, batch, write=not dry_run)
    previous, simulated_rows = state_for_run(matched.previous, simulated=settings.simulated)
    # Rows of this file a simulator made, which a real run generates for real.
    in_file = {row.row for row in batch.requests}
    redone = sum(1 for row in simulated_rows if row in in_file)
    existing = (
        {}
        if force
        else existing_images(settings, store, batch.requests, include_simulated=settings.simulated)
    )
    with api_endpoint(settings) as endpoint:

        async def go() -> BatchSummary:
            async with IdeogramClient(
                endpoint.base_url,
                endpoint.api_key,
                max_inflight=settings.batch_inflight,
                # Concurrent batches share the organisation's poll budget like its slots.
                poll_rate_per_s=POLL_RATE_PER_S / settings.concurrent_batches,
                url_policy=UrlPolicy.from_settings(settings, endpoint.base_url),
            ) as client:
                client.read_reference = store.get_bytes
                if settings.api_mode == "async" and not dry_run:  # up while the batch is planned
                    client.use_channel(
                        SubmitProcess.start(
                            endpoint.base_url,
                            endpoint.api_key,
                            timeout_s=client.generate_timeout_s,
                            connections=max(settings.batch_inflight * 2, 20),
                            threads=settings.batch_inflight,
                        )
                    )
                loop = asyncio.get_running_loop()
                on_lost.append(
                    lambda: loop.call_soon_threadsafe(
                        client.stop.throw, "another runner took this batch over"
                    )
                )
                # Ideogram's free dry-run quotes replace table prices when a limit is set
                # or only an estimate is wanted.
                guarded = dry_run or max_cost_usd is not None
                prices = await quote_unit_prices(client, batch.requests) if guarded else {}
                # Only rows that will be sent are priced (will_send.py).
                plan = send_plan(
                    store,
                    batch,
                    matched,
                    previous,
                    duplicates=existing.keys(),
                    max_inflight=settings.batch_inflight,
                    resend_unknown=resend_unknown,
                )
                estimate = estimate_cost(
                    batch,
                    previous,
                    max_inflight=settings.batch_inflight,
                    unit_prices=prices,
                    plan=plan,
                )
                if dry_run:
                    return BatchSummary(
                        batch=batch.key,
                        run_id=run_id or "dry-run",
                        rows=len(batch.rows),
                        skipped=estimate.rows_already_done,
                        rejected=estimate.rows_rejected,
                        storage_root=store.root,
                        simulated=settings.simulated,
                        estimated_cost_usd=estimate.usd,
                        dry_run=True,
                        simulated_rows_redone=redone,
                    )
                check_budget(estimate, max_cost_usd)
                summary = await run_batch(
                    batch,
                    client,
                    store,
                    previous=previous,
                    run_id=run_id,
                    simulated=endpoint.simulated,
                    progress=progress,
                    existing=existing,
                    extra_fields=extra_fields,
                    api_mode=settings.api_mode,
                    flush_every=settings.flush_every,
                    resend_unknown=resend_unknown,
                    history=HistoryTables(settings),
                    tiles=tiles,
                )
                summary.estimated_cost_usd = estimate.usd
                summary.simulated_rows_redone = redone
                return summary

        return asyncio.run(go())


def estimate_batch(
    batch: Batch, settings: Settings, *, store: ObjectStore | None = None
) -> CostEstimate:
    """What running ``batch`` now would cost, given what the storage root already holds."""
    store = store or open_store(settings)
    store.preflight()
    # An operation's request is its source's bytes: unresolved, no row would match the
    # history, and a re-run would be priced as new work.
    batch = resolve_sources(batch, settings, store, write=False)
    matched = match_rows(settings, store, batch, write=False)
    previous, _ = state_for_run(matched.previous, simulated=settings.simulated)
    existing = existing_images(
        settings, store, batch.requests, include_simulated=settings.simulated
    )
    plan = send_plan(
        store,
        batch,
        matched,
        previous,
        duplicates=existing.keys(),
        max_inflight=settings.batch_inflight,
    )
    prices = _operation_quotes(batch, settings, store)
    return estimate_cost(
        batch, previous, max_inflight=settings.batch_inflight, plan=plan, unit_prices=prices
    )


def _operation_quotes(
    batch: Batch, settings: Settings, store: ObjectStore
) -> dict[tuple[str, str | None], float]:
    """Ideogram's ``dry_run`` quotes for the batch's operations that document one
    (remove-background's v2 path), as a run with ``--max-cost`` asks; none otherwise, and
    nothing is sent to an endpoint that documents no ``dry_run``."""
    quotable = [
        row
        for row in batch.requests
        if row.is_operation and row.source is not None and operation(row.operation).v2_path
    ]
    if not quotable:
        return {}
    with api_endpoint(settings) as endpoint:

        async def go() -> dict[tuple[str, str | None], float]:
            policy = UrlPolicy.from_settings(settings, endpoint.base_url)
            async with IdeogramClient(
                endpoint.base_url, endpoint.api_key, url_policy=policy
            ) as client:
                client.read_reference = store.get_bytes
                return await quote_unit_prices(client, quotable)

        return asyncio.run(go())


def execute_csv(path: str, settings: Settings, key: str | None = None) -> BatchSummary:
    """Convenience for scripts and benchmarks: load the CSV and run it."""
    return execute_batch(load_batch(path, key=key), settings)

"""What a batch will cost before anything is sent, and the guard that refuses a costly one.

The estimate is plain arithmetic over the parsed batch: for every row that will be sent, the
published price of one image of its model and rendering speed
(:mod:`ideogram_pipeline.ideogram.prices`) times ``num_images``. Rows that will not be sent
cost nothing and are left out: rejected rows,
rows already ``stored`` or ``unsafe`` for the same request (the engine skips them, see
:func:`ideogram_pipeline.runs.records.already_done`), and rows asking for more images than
the account may have in flight (the engine rejects them).

Where the API can quote (Ideogram's v2 ``?dry_run=true``, free and authoritative for the
account), :func:`quote_unit_prices` asks once per (model, rendering speed) and those prices
replace the table's.

Given a :class:`~ideogram_pipeline.runs.will_send.SendPlan` (``will_send.py``), only the
rows the run will send are priced: rows whose paid attempt the ledger holds (collected
after a kill or a full disk without paying again, or reported ``unknown``) and rows linked
to identical stored images are left out, so the estimate after a kill is what the resume
pays.

It is an upper bound for a run that goes well: a row that fails on a 422 or a 429 is not
billed. Retried 5xx are not billed either, so retries never raise the real cost above it.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ideogram_pipeline.batches.files import Batch
from ideogram_pipeline.history.schema import RowState
from ideogram_pipeline.ideogram.client import IdeogramClient
from ideogram_pipeline.ideogram.errors import IdeogramError
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.operations import operation
from ideogram_pipeline.ideogram.prices import has_priced_controls, quote_key, request_price
from ideogram_pipeline.ideogram.requests import V2_MODEL_PATHS
from ideogram_pipeline.runs.will_send import SendPlan, plan_sends

__all__ = [
    "CostEstimate",
    "CostLimitExceeded",
    "check_budget",
    "estimate_cost",
    "quote_unit_prices",
]


@dataclass(frozen=True)
class CostEstimate:
    """The price of the rows a run would send, and what was left out and why."""

    batch: str
    rows: int
    rows_to_send: int
    images: int
    usd: float
    rows_already_done: int = 0
    rows_rejected: int = 0
    usd_by_model: dict[str, float] = field(default_factory=dict)
    unpriced_models: tuple[str, ...] = ()
    quoted_models: tuple[str, ...] = ()  # priced by Ideogram's dry-run quote, not the table
    rows_linked: int = 0  # identical to stored images or an earlier row: linked, not paid
    rows_recovered: int = 0  # paid before a kill: collected from the ledger, not paid again
    rows_unknown: int = 0  # sent before a kill without an answer: not resent

    def describe(self) -> str:
        """One line for a log or a terminal."""
        text = (
            f"estimated cost ${self.usd:.2f} for {self.images} image(s) from "
            f"{self.rows_to_send} row(s) to send"
        )
        if self.rows_already_done:
            text += f"; {self.rows_already_done} row(s) already done are skipped"
        if self.rows_linked:
            text += f"; {self.rows_linked} identical row(s) are linked, not paid"
        if self.rows_recovered:
            text += f"; {self.rows_recovered} row(s) paid before are collected from the ledger"
        if self.rows_unknown:
            text += f"; {self.rows_unknown} unknown row(s) are not resent"
        if self.unpriced_models:
            text += f"; no published price for {', '.join(self.unpriced_models)}"
        if self.quoted_models:
            text += f"; priced by Ideogram's quote for {', '.join(self.quoted_models)}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "rows": self.rows,
            "rows_to_send": self.rows_to_send,
            "images": self.images,
            "estimated_cost_usd": round(self.usd, 4),
            "rows_already_done": self.rows_already_done,
            "rows_rejected": self.rows_rejected,
            "usd_by_model": {k: round(v, 4) for k, v in sorted(self.usd_by_model.items())},
            "unpriced_models": list(self.unpriced_models),
            "quoted_models": list(self.quoted_models),
            "rows_linked": self.rows_linked,
            "rows_recovered": self.rows_recovered,
            "rows_unknown": self.rows_unknown,
        }


class CostLimitExceeded(Exception):
    """The estimate is above the run's maximum; nothing was sent."""

    def __init__(self, estimate: CostEstimate, max_cost_usd: float) -> None:
        if estimate.unpriced_models:
            why = f"its cost is unknown: {estimate.describe()}"
        else:
            why = f"{estimate.describe()}, above max_cost_usd ${max_cost_usd:.2f}"
        super().__init__(f"batch {estimate.batch} refused before sending anything: {why}")
        self.estimate = estimate
        self.max_cost_usd = max_cost_usd


def estimate_cost(
    batch: Batch,
    previous: Mapping[int, RowState] | None = None,
    *,
    max_inflight: int | None = None,
    unit_prices: Mapping[tuple[str, str | None], float] | None = None,
    plan: SendPlan | None = None,
) -> CostEstimate:
    """Price the rows of ``batch`` that a run would send.

    ``plan`` (``will_send.plan_sends``) says which rows those are; without it every row not
    done, rejected, too large or a repeat of an earlier seeded row is priced.

    ``previous`` is the batch's recorded state (:func:`ideogram_pipeline.history.batch_state`);
    ``max_inflight`` the account's limit, above which a row is rejected rather than sent;
    ``unit_prices`` per-image quotes by (model, rendering speed) that override the table.
    """
    previous = previous or {}
    unit_prices = unit_prices or {}
    quoted: dict[str, None] = {}
    by_model: dict[str, float] = defaultdict(float)
    unpriced: dict[str, None] = {}
    # Which rows are sent is the plan's one decision (will_send.py); without a ledger or
    # the history's duplicates, it leaves out rows done, rejected or too large.
    if plan is None:
        plan = plan_sends(batch, previous, keys={}, ledger={}, max_inflight=max_inflight)
    rows_to_send = images = 0
    for row in batch.requests:
        if row.row not in plan.send:
            continue
        rows_to_send += 1
        images += row.num_images
        # An operation is its own product (upscale, remix, ...), whatever model runs it.
        product = row.operation if row.is_operation else row.model
        quote = unit_prices.get(quote_key(row))
        if quote is not None and not has_priced_controls(row):
            by_model[product] += quote * row.num_images
            quoted[product] = None
            continue
        try:
            by_model[product] += request_price(row) * row.num_images
        except KeyError:
            unpriced[product] = None
    return CostEstimate(
        batch=batch.key,
        rows=len(batch.rows),
        rows_to_send=rows_to_send,
        images=images,
        usd=round(sum(by_model.values()), 6),
        rows_already_done=plan.done,
        rows_rejected=plan.rejected,
        usd_by_model=dict(by_model),
        unpriced_models=tuple(unpriced),
        quoted_models=tuple(quoted),
        rows_linked=plan.linked,
        rows_recovered=plan.recovered,
        rows_unknown=plan.unknown,
    )


async def quote_unit_prices(
    client: IdeogramClient, requests: Iterable[GenerationRequest]
) -> dict[tuple[str, str | None], float]:
    """Ideogram's own price of one image for each (model, rendering speed) in ``requests``.

    Only models on the v2 API can be quoted; a quote that fails leaves the table's price.
    """
    prices: dict[tuple[str, str | None], float] = {}
    rows = list(requests)
    # An operation with a documented v2 path (remove-background) is quoted with its first
    # row as it is (the quote needs the image); the others have no dry_run to ask.
    for row in rows:
        quotable = row.is_operation and operation(row.operation).v2_path is not None
        if quotable and row.source is not None and quote_key(row) not in prices:
            with contextlib.suppress(IdeogramError):
                prices[quote_key(row)] = await client.quote_usd(row)
    kinds = {
        quote_key(r)
        for r in rows
        if r.model in V2_MODEL_PATHS
        and not has_priced_controls(r)
        and not r.references
        and not r.is_operation
    }
    for model, speed in sorted(kinds, key=str):
        # 4.5's quality tiers are quoted as themselves (issue 18), speeds as speeds.
        tier = speed if speed in ("LOW", "MEDIUM", "HIGH") else None
        probe = GenerationRequest(
            row=0,
            prompt="price quote",
            model=model,
            rendering_speed=None if tier else speed,
            quality=tier,
        )
        try:
            prices[(model, speed)] = await client.quote_usd(probe)
        except IdeogramError:
            continue
    return prices


def check_budget(estimate: CostEstimate, max_cost_usd: float | None) -> None:
    """Raise :class:`CostLimitExceeded` when a maximum is set and the estimate exceeds it
    (or cannot be known because a model has no published price)."""
    if max_cost_usd is None:
        return
    if estimate.unpriced_models or estimate.usd > max_cost_usd + 1e-9:
        raise CostLimitExceeded(estimate, max_cost_usd)

"""Rows whose request left and whose answer was never recorded: possibly billed.

An ``unknown`` row is money in doubt. Ideogram may have generated (and billed) it while
our process died, or the connection dropped before the answer arrived; nothing in the
history says which. Such a row is never resent silently: ``ideogram-pipeline unknown``
lists each with when it was sent and what resending it would cost, and ``run
--resend-unknown`` prints that cost before sending anything (within ``--max-cost``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb

from ideogram_pipeline.ideogram.operations import GENERATE
from ideogram_pipeline.ideogram.prices import operation_price, price_per_image

__all__ = ["UnknownRow", "find_unknown", "resend_cost"]

_QUERY = """
SELECT batch, "row", prompt, model, rendering_speed, coalesce(num_images, 1) AS num_images,
       attempt_id, created_at, error, coalesce(operation, 'generate') AS operation
FROM generations
WHERE status = 'unknown' {where}
ORDER BY batch, "row"
"""


@dataclass(frozen=True)
class UnknownRow:
    """One row in doubt: where it is, when its request left, what a resend would cost."""

    batch: str
    row: int
    prompt: str
    model: str
    num_images: int
    sent_at: datetime | None  # when the request's attempt started (from its attempt id)
    resend_usd: float | None  # None when the model has no published price
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "row": self.row,
            "sent_at": self.sent_at.isoformat(timespec="seconds") if self.sent_at else None,
            "model": self.model,
            "num_images": self.num_images,
            "resend_usd": self.resend_usd,
            "prompt": self.prompt,
        }


def _sent_at(attempt_id: str | None, fallback: datetime | None) -> datetime | None:
    """Attempt ids start with the nanosecond time the attempt began (``ledger.py``)."""
    try:
        return datetime.fromtimestamp(int(str(attempt_id).split("-", 1)[0]) / 1e9, tz=UTC)
    except ValueError:
        return fallback


def _price(model: str, speed: str | None, images: int, operation: str) -> float | None:
    try:
        if operation != GENERATE:  # upscale, remix, ...: priced by the operation
            return round(operation_price(operation, speed) * images, 6)
        return round(price_per_image(model, speed) * images, 6)
    except KeyError:
        return None


def find_unknown(con: duckdb.DuckDBPyConnection, batch: str | None = None) -> list[UnknownRow]:
    """Every ``unknown`` row of the history (``con`` has the ``generations`` view)."""
    where, params = ("AND batch = ?", [batch]) if batch else ("", [])
    rows = con.execute(_QUERY.format(where=where), params).fetchall()
    return [
        UnknownRow(
            batch=str(key),
            row=int(row),
            prompt=str(prompt or ""),
            model=str(model or operation),
            num_images=int(images),
            sent_at=_sent_at(attempt_id, created_at),
            resend_usd=_price(str(model or ""), speed, int(images), str(operation)),
            error=str(error or ""),
        )
        for key, row, prompt, model, speed, images, attempt_id, created_at, error, operation in rows
    ]


def resend_cost(rows: Sequence[UnknownRow]) -> tuple[float, int]:
    """What resending ``rows`` costs at published prices, and how many have no price."""
    priced = [r.resend_usd for r in rows if r.resend_usd is not None]
    return round(sum(priced), 6), len(rows) - len(priced)

"""A client-side limit on images in flight, counted the way Ideogram counts them.

Ideogram's rate limit is "at most N images being generated at once per organisation", so a
request for four images takes four slots. Staying under the limit ourselves makes 429s the
exception rather than the control loop: every 429 is a wasted round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["InflightLimiter"]


class InflightLimiter:
    """An asyncio semaphore whose permits are images, acquired in FIFO order.

    FIFO matters: a request for 8 images must not starve behind a stream of 1-image
    requests, so a waiter blocks everyone queued behind it.
    """

    def __init__(self, max_images: int) -> None:
        if max_images < 1:
            raise ValueError("max_images must be at least 1")
        self.max_images = max_images
        self.in_flight = 0
        self.peak = 0
        self._condition = asyncio.Condition()
        self._queue: list[object] = []

    def learn_limit(self, account_limit: int) -> None:
        """Lower the limit to what Ideogram says the account allows (a 429's
        ``max_inflight_requests``), so a client configured too high stops provoking 429s.
        Never raises it: the configured value may be this batch's share of the account."""
        if 1 <= account_limit < self.max_images:
            self.max_images = account_limit

    @asynccontextmanager
    async def slots(self, images: int) -> AsyncIterator[None]:
        """Hold ``images`` slots (capped at the limit) for the duration of the block."""
        needed = min(max(images, 1), self.max_images)
        token = object()

        def ready() -> bool:
            nonlocal needed  # the limit may have been lowered while waiting
            needed = min(max(images, 1), self.max_images)
            return self._queue[0] is token and self.in_flight + needed <= self.max_images

        async with self._condition:
            self._queue.append(token)
            try:
                await self._condition.wait_for(ready)
            finally:
                self._queue.remove(token)
                self._condition.notify_all()
            self.in_flight += needed
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            async with self._condition:
                self.in_flight -= needed
                self._condition.notify_all()

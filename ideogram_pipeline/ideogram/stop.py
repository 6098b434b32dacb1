"""The client's stop switch: once thrown, no new request leaves and no poll waits any longer.

A person pressing Ctrl-C (or Dagster terminating a run) wants the spending to stop *now*,
while what is already paid for is kept. The run's signal handler throws the switch
(:meth:`StopSwitch.throw`); the client checks it right before every paid send and every
poll, and its waits end as soon as it is thrown. What was already sent is not touched: a
synchronous request finishes and is recorded; an asynchronous one has its generation id
recorded and is left for the next run to collect, at no new cost.

:class:`SendsStopped` is not an :class:`~ideogram_pipeline.ideogram.errors.IdeogramError`:
nothing failed, so no retry loop may catch it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

__all__ = ["SendsStopped", "StopSwitch"]

logger = logging.getLogger(__name__)


class SendsStopped(Exception):
    """The run is stopping: this request was not sent, or its generation is left to poll.

    ``generation_id`` is set when Ideogram had already accepted the submission (async mode):
    the next run polls it instead of paying again.
    """

    def __init__(
        self, message: str = "the run is stopping", generation_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.generation_id = generation_id


class StopSwitch:
    """Thrown once per run; every wait of the client that could last ends when it is."""

    def __init__(self) -> None:
        self.thrown = False
        self.reason = ""
        self._event: asyncio.Event | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_throw(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when the switch is thrown (at once if it already is): for
        senders outside the event loop, such as the submitting process."""
        self._listeners.append(listener)
        if self.thrown:
            listener()

    def _ensure_event(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
            if self.thrown:
                self._event.set()
        return self._event

    def throw(self, reason: str = "stop requested") -> None:
        """Stop new sends (call on the event loop's thread)."""
        if not self.thrown:
            self.thrown = True
            self.reason = reason
            for listener in self._listeners:
                try:
                    listener()
                except Exception:  # the stop itself must happen whatever a listener does
                    logger.exception("a stop listener failed")
        if self._event is not None:
            self._event.set()

    def check(self) -> None:
        """Raise :class:`SendsStopped` once thrown: call right before a paid send."""
        if self.thrown:
            raise SendsStopped(f"not sent: {self.reason}")

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` that returns early when the switch is thrown."""
        if self.thrown:
            return
        event = self._ensure_event()
        sleeper = asyncio.ensure_future(asyncio.sleep(max(seconds, 0.0)))
        thrown = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, thrown}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, thrown):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(sleeper, thrown, return_exceptions=True)

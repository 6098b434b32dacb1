"""Where an asynchronous submission's POST can be made instead of the client's threads.

The client makes each async submission between two journal lines, the intent and the
generation id, so that a run killed in between is the only way to lose an id. A channel
(the run's submitting process, ``runs/submit_process.py``) makes the POST and writes both
lines itself, out of reach of the run's own GIL and able to outlive it. The client only
knows this protocol; without a usable channel it submits from its threads as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

__all__ = ["ChannelGone", "JournalLine", "SubmitChannel", "SubmitLines"]

JournalLine = dict[str, Any]


@dataclass(frozen=True)
class SubmitLines:
    """The journal lines that bracket one submission: ``intent`` (None on a retry) right
    before the POST, ``submitted`` (stamped with the generation id) the moment Ideogram
    accepts, both appended to ``journal``. ``written`` gets each line once it is durable,
    on the event loop's thread (the run copies it to the store)."""

    journal: Path
    intent: JournalLine | None
    submitted: JournalLine
    written: Callable[[JournalLine], None]


class ChannelGone(Exception):
    """The channel is not there (never started, or died before the job reached it):
    nothing was sent, so the client submits from its own threads."""


class SubmitChannel(Protocol):
    @property
    def usable(self) -> bool: ...

    async def post(
        self, path: str, json_body: Any, parts: list[Any] | None, lines: SubmitLines
    ) -> httpx.Response:
        """Intent, POST, id; raises what the client's own submission would raise
        (``SendsStopped``, ``NoSpaceLeft``, ``TransportError``, ``ResponseLost``), or
        :class:`ChannelGone`."""
        ...

    async def drained(self, timeout_s: float) -> bool:
        """Whether every job sent has ended and handed back its lines (waiting up to
        ``timeout_s``): until then the channel may still append to the run's journal."""
        ...

    def stop(self) -> None: ...

    def close(self) -> None: ...

"""One billable piece of simulator work, whatever the endpoint: a generation or an operation
on a stored image (issue 19).

Why a record: the fault switches (scripted ``[sim:...]`` triggers, random 5xx and 422, the
in-flight limit counted in images, latency) must behave the same on every endpoint, and the
random draws must happen in the same order, so one code path serves them all
(``_SimulatedApi.serve`` for synchronous answers, ``SimulatedV2`` for asynchronous ones).
A job says only what differs: which text carries its triggers, which attempts it counts
with, how many in-flight slots it holds, and how its answer is built and billed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ideogram_pipeline.simulator.state import Triggers

__all__ = ["Job"]


@dataclass(frozen=True)
class Job:
    """What one request asks the simulator to do.

    ``trigger_text`` is read for ``[sim:...]`` markers; ``attempt_key`` counts attempts for
    the "fail the first N attempts" triggers (a generation's prompt; an operation's route,
    source image and prompt). ``build`` makes the 200 answer once faults are ruled out, and
    ``bill`` records what that answer costs.
    """

    trigger_text: str
    attempt_key: str
    slots: int
    build: Callable[[Triggers], dict[str, Any]]
    bill: Callable[[dict[str, Any]], None]

    @property
    def triggers(self) -> Triggers:
        return Triggers.from_prompt(self.trigger_text)

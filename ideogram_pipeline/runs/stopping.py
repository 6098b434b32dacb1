"""A clean stop on SIGINT or SIGTERM: the first signal stops spending, the second stops now.

Ctrl-C in a terminal, ``kill`` from a script and Dagster's "Terminate" (SIGTERM to the run
worker) all mean "stop paying", not "forget what was paid". So while a batch runs in the
main thread its event loop takes both signals itself instead of letting them land as an
exception in the middle of an HTTP call (where they used to be retried as transport errors,
or to leave paid rows ``unknown``):

1. the first signal throws the client's :class:`~ideogram_pipeline.ideogram.stop.StopSwitch`:
   no new request leaves; requests already sent finish and are recorded (asynchronous ones
   have their generation id recorded and are left for the next run to collect); the run
   then ends with :class:`BatchInterrupted`, saying what was done and what is left;
2. a second signal, or :data:`GRACE_S` after the first, cancels the remaining work at once;
   the records already made are still written, and requests cut off mid-flight are in the
   ledger, so the next run reports them ``unknown`` instead of paying for them again.

The previous handlers (Dagster's) are restored when the batch ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ideogram_pipeline.ideogram.stop import StopSwitch
from ideogram_pipeline.runs.summary import BatchAborted

__all__ = ["GRACE_S", "STOP_SIGNALS", "BatchInterrupted", "StopState", "stop_on_signals"]

#: How long requests already sent may take to finish after the first signal: the process
#: must exit within 30 s of it, Dagster's shutdown and the last history write included.
GRACE_S = 20.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BatchInterrupted(BatchAborted):
    """The run was stopped by a signal; rows not finished are left for the next run."""


@dataclass
class StopState:
    """What the signals did: how many arrived, and whether the remaining work was cut."""

    signals: int = 0
    forced: bool = False
    signal_name: str = ""


def _say(message: str) -> None:
    # Straight to stderr: the person who pressed Ctrl-C is watching the terminal, and a
    # logger may not be configured in this process.
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals(
    switch: StopSwitch, force: Callable[[], None], *, grace_s: float = GRACE_S
) -> Iterator[StopState]:
    """Route SIGINT and SIGTERM to ``switch`` (first) and ``force`` (second, or after
    ``grace_s``) for the block's life. Outside the main thread signals cannot be handled
    and the block runs unchanged. Must be entered inside the running event loop."""
    state = StopState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    loop = asyncio.get_running_loop()

    def cut() -> None:
        if not state.forced:
            state.forced = True
            force()

    def on_loop(signum: int) -> None:
        state.signals += 1
        name = signal.Signals(signum).name
        if state.signals == 1:
            state.signal_name = name
            switch.throw(f"{name} received")
            _say(
                f"{name}: no new requests will be sent; waiting up to {grace_s:.0f} s for "
                "those already sent (signal again to stop at once)"
            )
            loop.call_later(grace_s, cut)
        else:
            _say(f"{name} again: stopping now; what was recorded is kept")
            cut()

    def handler(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(on_loop, signum)

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

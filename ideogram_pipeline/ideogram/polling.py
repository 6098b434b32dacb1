"""When to poll an asynchronous generation: a learnt first poll and a shared poll budget.

Ideogram counts a generation's images against the in-flight limit until it completes, and
our own limiter holds their slots until we *see* it complete, so every millisecond between
completion and our poll is a millisecond the account sits idle: at 0.5 s per generation, a
25 ms detection lag alone costs 5% of throughput. Polling more often costs requests against
Ideogram's 1,000 polls per 10 s per organisation. So:

- the first poll goes out at a learnt quantile of the generation's latency
  (:class:`LatencyTracker`, one per model and speed): early enough that most generations
  are caught within a few milliseconds of completing, late enough that most are caught by
  that one poll;
- an overdue generation is polled again after ``min_interval``, backing off by
  ``backoff`` per poll up to a tenth of its expected latency, so a slow one costs a few
  polls, not hundreds;
- every poll of the client takes a token from one :class:`PollBudget` (a token bucket with
  a small burst), so the client as a whole never exceeds its share of the organisation's
  budget however many generations are pending; over any 10 s it sends at most
  ``burst + 10 * rate`` polls.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

__all__ = [
    "DEFAULT_POLL_RATE_PER_S",
    "LatencyTracker",
    "PollBudget",
    "next_interval",
]

#: Polls per second for one client: half of Ideogram's 1,000 per 10 s, leaving the rest for
#: other runs and tools on the same organisation.
DEFAULT_POLL_RATE_PER_S = 50.0
#: Polls that may go out at once after a quiet spell (several generations due together).
DEFAULT_POLL_BURST = 50
#: Gap before the second poll of an overdue generation; later gaps grow by BACKOFF.
POLL_MIN_INTERVAL_S = 0.01
POLL_BACKOFF = 1.5
#: Later gaps never exceed this fraction of the expected latency.
POLL_MAX_INTERVAL_FRACTION = 0.1


class PollBudget:
    """A token bucket shared by every poll of one client.

    Tokens may go negative: a caller reserves the next free moment and sleeps until it,
    so callers are served in order and the long-run rate never exceeds ``rate_per_s``.
    ``polls`` counts every poll; ``peak_10s`` is the most polls seen in any 10 s window.
    """

    def __init__(
        self, rate_per_s: float = DEFAULT_POLL_RATE_PER_S, burst: int = DEFAULT_POLL_BURST
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("the poll rate must be positive and the burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._refilled_at = time.monotonic()
        self.polls = 0
        self.peak_10s = 0
        self._recent: deque[float] = deque()

    async def take(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled_at) * self.rate_per_s)
        self._refilled_at = now
        self._tokens -= 1.0
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate_per_s)
        sent = time.monotonic()
        self.polls += 1
        self._recent.append(sent)
        while self._recent and sent - self._recent[0] > 10.0:
            self._recent.popleft()
        self.peak_10s = max(self.peak_10s, len(self._recent))


class LatencyTracker:
    """Where to put the first poll: a running estimate of a latency quantile.

    Stochastic approximation: after each generation the estimate moves down a little when
    the first poll already found it complete, and up a little when it did not, so in the
    long run a fraction ``quantile`` of generations is caught by the first poll. Steps are
    proportional to the estimate, so the same code suits 0.5 s and 20 s latencies, and small
    (generations often complete together, so outcomes come in runs); a long run of the same
    outcome (rare at the target quantile) doubles the step every ``streak`` observations
    (up to 64x), so a far-off estimate still converges in a few hundred generations; with
    a shorter ``streak`` (8) ordinary runs boosted the steps, and the extra polls cost 5%
    of throughput. Until ``warmup`` generations have been
    seen, or when one takes far longer than expected (a new model, a slower API), the
    estimate jumps to just under what was observed. A generation already complete at its
    first poll only says the latency was at most that (the poll may have left late), so it
    never raises the estimate.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        *,
        quantile: float = 0.8,
        step: float = 0.003,
        warmup: int = 3,
        streak: int = 32,
    ) -> None:
        self.estimate_s = initial_s
        self.quantile = quantile
        self.step = step
        self.warmup = warmup
        self.streak = streak
        self.observed = 0
        self._run = 0  # consecutive observations with the same outcome
        self._last: bool | None = None

    def observe(self, elapsed_s: float, caught_by_first_poll: bool) -> None:
        """Learn from one completed generation, seen ``elapsed_s`` after submission."""
        self.observed += 1
        if caught_by_first_poll:
            # Censored: the generation completed at some moment before this poll, which a
            # busy loop (a run's start-up) may have sent late. It bounds the latency from
            # above only, so it may lower the estimate but never raise it: learnt as a
            # latency, the first polls of a run taught 0.67 s for 0.5 s generations, and
            # 150 generations were each seen 170 ms late before the estimate came down.
            if self.observed <= self.warmup:
                self.estimate_s = min(self.estimate_s, 0.9 * elapsed_s)
                return
        elif self.observed <= self.warmup or elapsed_s > 2.0 * self.estimate_s:
            self.estimate_s = 0.9 * elapsed_s
            return
        self._run = self._run + 1 if caught_by_first_poll == self._last else 0
        self._last = caught_by_first_poll
        boost = 2.0 ** min(self._run // self.streak, 6)
        target = self.quantile - (1.0 if caught_by_first_poll else 0.0)
        self.estimate_s = max(0.001, self.estimate_s * (1.0 + self.step * boost * target))


def next_interval(poll_number: int, expected_s: float) -> float:
    """Seconds to wait before poll ``poll_number + 1`` of a generation not yet complete."""
    ceiling = max(POLL_MIN_INTERVAL_S, POLL_MAX_INTERVAL_FRACTION * expected_s)
    return min(POLL_MIN_INTERVAL_S * POLL_BACKOFF ** max(poll_number - 1, 0), ceiling)

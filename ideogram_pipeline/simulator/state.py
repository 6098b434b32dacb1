"""The simulator's knobs, its counters and its prompt triggers.

Kept apart from the HTTP app so tests and the CLI can build a config and read stats without
touching Starlette, and so the rules for "what is billed" live in one small place.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ideogram_pipeline.settings import DEFAULT_MAX_INFLIGHT

__all__ = [
    "DEFAULT_SIMULATOR_API_KEY",
    "SimulatorConfig",
    "SimulatorStats",
    "Triggers",
]

#: Not a secret: it only guards a loopback simulator against a client sending no key at all.
DEFAULT_SIMULATOR_API_KEY = "ideogram-simulator-key"


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything the simulator does that is not dictated by the request.

    Rates are fractions in 0..1 drawn from ``random.Random(random_seed)``, so a sequential run
    is reproducible. Times are seconds. ``image_scale`` shrinks pixel sizes (not the reported
    ``resolution``) so tests can move small PNGs.
    """

    api_key: str = DEFAULT_SIMULATOR_API_KEY
    latency_s: float = 0.0
    slow_latency_s: float = 2.0
    download_latency_s: float = 0.0
    #: How long an asynchronous submission takes to answer with its id (Ideogram: a
    #: network round trip); the generation is accepted, and billed, before the answer.
    submit_latency_s: float = 0.0
    server_error_rate: float = 0.0
    unsafe_rate: float = 0.0
    safety_reject_rate: float = 0.0
    url_ttl_s: float = 3600.0
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    image_scale: float = 1.0
    random_seed: int = 0
    #: ``GET /v2/generations/{id}`` calls allowed per 10 s (Ideogram: 1,000 per organisation).
    poll_limit_per_10s: int = 1000
    #: Answer JSON gzip-compressed to clients that accept it, as a CDN in front of an API
    #: may (images stay as they are).
    gzip_json: bool = False
    #: HMAC key for image URLs; derived from ``random_seed`` when unset.
    url_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("server_error_rate", "unsafe_rate", "safety_reject_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SimulatorConfig.{name} must be within 0..1, got {value}")
        for name in ("latency_s", "slow_latency_s", "download_latency_s", "submit_latency_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimulatorConfig.{name} must not be negative")
        if self.max_inflight < 1:
            raise ValueError("SimulatorConfig.max_inflight must be at least 1")
        if not 0.0 < self.image_scale <= 4.0:
            raise ValueError("SimulatorConfig.image_scale must be within (0, 4]")
        if not self.api_key:
            raise ValueError("SimulatorConfig.api_key must not be empty")


_FAIL_CODES = frozenset({402, 429, 500, 502, 503, 504})
_FAIL_TRIGGER = re.compile(r"\[sim:(\d{3})(?:x(\d+))?\]")


@dataclass(frozen=True)
class Triggers:
    """Behaviour scripted by ``[sim:...]`` markers in a prompt (see the simulator docstring)."""

    unsafe: bool = False
    safety_reject: bool = False
    expired: bool = False
    slow: bool = False
    corrupt: bool = False
    #: (status, attempts): the first ``attempts`` attempts of this exact prompt get ``status``.
    failures: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_prompt(cls, prompt: str) -> Triggers:
        if "[sim:" not in prompt:
            return cls()
        failures = tuple(
            (int(code), int(times or 1))
            for code, times in _FAIL_TRIGGER.findall(prompt)
            if int(code) in _FAIL_CODES
        )
        return cls(
            unsafe="[sim:unsafe]" in prompt,
            safety_reject="[sim:422]" in prompt,
            expired="[sim:expired]" in prompt,
            slow="[sim:slow]" in prompt,
            corrupt="[sim:corrupt]" in prompt,
            failures=failures,
        )

    def failure_for_attempt(self, attempt: int) -> int | None:
        """The status scripted for the ``attempt``-th (1-based) try, if any."""
        for status, attempts in self.failures:
            if attempt <= attempts:
                return status
        return None


class SimulatorStats:
    """Thread-safe counters the tests read to prove limits held and nothing was paid twice.

    Billed means every image of a 200 response, unsafe ones included; 400, 401, 402, 422,
    429 and 5xx answers are never billed (as at Ideogram).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.images_inflight = 0
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests_total = 0
        self.requests_by_status: Counter[int] = Counter()
        #: POSTs by ``"POST <path> <media type>"`` (see ``traffic.py``).
        self.requests_by_route: Counter[str] = Counter()
        self.invalid_requests: list[str] = []
        self.billed_requests = 0
        self.billed_images = 0
        self.billed_usd = 0.0
        self.billed_by_prompt_seed: Counter[tuple[str, int]] = Counter()
        self.billed_by_body_hash: Counter[str] = Counter()
        #: Billed images by request path (a describe bills its one input image).
        self.billed_by_route: Counter[str] = Counter()
        self.unsafe_images = 0
        self.max_images_inflight_seen = 0
        self.rate_limited = 0
        self.downloads = 0
        self.corrupt_downloads = 0
        self.downloads_by_status: Counter[int] = Counter()

    def reset(self) -> None:
        """Zero every counter (the images currently in flight stay counted)."""
        with self._lock:
            self._reset_counters()

    def record_response(self, status: int, error: str | None = None) -> None:
        with self._lock:
            self.requests_total += 1
            self.requests_by_status[status] += 1
            if status == 400 and error:
                self.invalid_requests.append(error)
            if status == 429:
                self.rate_limited += 1

    def record_route(self, key: str) -> None:
        with self._lock:
            self.requests_by_route[key] += 1

    def try_acquire(self, images: int, limit: int) -> bool:
        """Take ``images`` in-flight slots, or refuse when that would exceed ``limit``."""
        with self._lock:
            if self.images_inflight + images > limit:
                return False
            self.images_inflight += images
            self.max_images_inflight_seen = max(self.max_images_inflight_seen, self.images_inflight)
            return True

    def release(self, images: int) -> None:
        with self._lock:
            self.images_inflight -= images

    def record_billing(
        self,
        *,
        prompt: str,
        seed: int,
        images: int,
        unsafe: int,
        body_hash: str,
        usd: float,
        route: str = "",
    ) -> None:
        with self._lock:
            if route:
                self.billed_by_route[route] += images
            self.billed_requests += 1
            self.billed_images += images
            self.billed_usd = round(self.billed_usd + usd, 6)
            self.unsafe_images += unsafe
            self.billed_by_prompt_seed[(prompt, seed)] += images
            self.billed_by_body_hash[body_hash] += 1

    def record_download(self, status: int, *, corrupt: bool = False) -> None:
        with self._lock:
            self.downloads_by_status[status] += 1
            if status == 200:
                self.downloads += 1
                self.corrupt_downloads += int(corrupt)

    def repeat_billed(self) -> dict[str, int]:
        """Request bodies billed more than once (body hash -> times billed)."""
        with self._lock:
            return {h: n for h, n in self.billed_by_body_hash.items() if n > 1}

    def snapshot(self) -> dict[str, Any]:
        """A consistent JSON-ready copy of every counter."""
        with self._lock:
            return {
                "requests_total": self.requests_total,
                "requests_by_status": {
                    str(k): v for k, v in sorted(self.requests_by_status.items())
                },
                "invalid_requests": list(self.invalid_requests),
                "requests_by_route": dict(sorted(self.requests_by_route.items())),
                "billed_requests": self.billed_requests,
                "billed_images": self.billed_images,
                "billed_usd": self.billed_usd,
                "unsafe_images": self.unsafe_images,
                "billed_by_body_hash": dict(self.billed_by_body_hash),
                "billed_by_route": dict(sorted(self.billed_by_route.items())),
                "images_inflight": self.images_inflight,
                "max_images_inflight_seen": self.max_images_inflight_seen,
                "rate_limited": self.rate_limited,
                "downloads": self.downloads,
                "corrupt_downloads": self.corrupt_downloads,
                "downloads_by_status": {
                    str(k): v for k, v in sorted(self.downloads_by_status.items())
                },
            }

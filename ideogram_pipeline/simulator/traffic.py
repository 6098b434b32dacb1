"""Which endpoint, in which encoding, each request reached: counted for tests and operators.

Why: whether a row went to the synchronous v1 endpoint or to v2 asynchronously decides
what a crash can cost (an ``unknown`` row, or a generation id to poll), and the encoding
(JSON or multipart with image parts) is what Ideogram validates. The billing counters say
what was paid, not where it was sent; ``SimulatorStats.requests_by_route`` says that.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from ideogram_pipeline.simulator.state import SimulatorStats

__all__ = ["RouteCounter", "route_key"]


def route_key(path: str, content_type: str) -> str:
    """``POST <path> <media type>``, e.g. ``POST /v2/image/generate/ideogram-3
    multipart/form-data``; ``-`` for a request without a body type."""
    media = content_type.split(";", 1)[0].strip().lower()
    return f"POST {path} {media or '-'}"


class RouteCounter:
    """ASGI middleware counting every POST by path and media type (GETs are polls and
    downloads, counted elsewhere). The path is counted before any check, so a request
    the simulator refuses is counted where it arrived."""

    def __init__(self, app: ASGIApp, stats: SimulatorStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            self.stats.record_route(route_key(scope["path"], content_type))
        await self.app(scope, receive, send)

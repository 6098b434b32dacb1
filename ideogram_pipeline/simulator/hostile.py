"""The simulator as a hostile image host: the download-side ``[sim:...]`` triggers.

The pipeline must survive an API response that points somewhere it should not go, and an
image host that answers with something other than the image. These triggers make the
simulator do exactly that, so the URL policy and the download limits are tested against
real HTTP rather than mocks (see the table in :mod:`ideogram_pipeline.simulator.server`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from ideogram_pipeline.simulator.images import PNG_SIGNATURE

__all__ = ["FOREIGN_HOST", "PRIVATE_HOST", "hostile_response", "hostile_url"]

#: Reserved for documentation (RFC 2606): never resolves, never belongs to anyone.
FOREIGN_HOST = "images.attacker.example"
#: The cloud metadata service every major cloud answers on.
PRIVATE_HOST = "169.254.169.254"
_CHUNK = 64 * 1024


def hostile_url(signed_url: str, image_id: str, mode: str) -> str:
    """The URL the generate response names for an image with download ``mode``."""
    if mode == "foreign-url":
        return f"https://{FOREIGN_HOST}/api/images/ephemeral/{image_id}.png"
    if mode == "private-url":
        return f"https://{PRIVATE_HOST}/latest/meta-data/iam/security-credentials/{image_id}.png"
    return signed_url  # the other modes misbehave when the URL is fetched


def _with_hop(request: Request, hop: int) -> str:
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "hop"]
    query.append(("hop", str(hop)))
    return str(request.url.replace_query_params(**dict(query)))


async def _endless_png(total: int) -> AsyncIterator[bytes]:
    """A PNG signature, then zeros: ``total`` bytes, streamed without a Content-Length."""
    yield PNG_SIGNATURE
    sent = len(PNG_SIGNATURE)
    zeros = bytes(_CHUNK)
    while sent < total:
        piece = zeros[: min(_CHUNK, total - sent)]
        sent += len(piece)
        yield piece


def hostile_response(request: Request, mode: str, huge_bytes: int) -> Response | None:
    """The misbehaving answer for a download in ``mode``; ``None`` to serve the image."""
    raw_hop = request.query_params.get("hop", "")
    hop = int(raw_hop) if raw_hop.isascii() and raw_hop.isdigit() else 0
    if mode == "redirect":
        return None if hop else RedirectResponse(_with_hop(request, 1), status_code=302)
    if mode == "redirect-loop":
        return RedirectResponse(_with_hop(request, hop + 1), status_code=302)
    if mode == "redirect-foreign":
        image = request.path_params.get("image_id", "x")
        target = f"https://{FOREIGN_HOST}/stolen/{image}.png"
        return RedirectResponse(target, status_code=302)
    if mode == "huge":
        return StreamingResponse(_endless_png(huge_bytes), media_type="image/png")
    if mode == "not-png":
        page = b"<html><body><h1>Sign in</h1><p>Session expired.</p></body></html>"
        return Response(page, media_type="text/html")
    return None

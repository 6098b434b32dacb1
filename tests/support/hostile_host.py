"""The simulator as a hostile image host: download-side ``[sim:...]`` prompt triggers.

The pipeline must survive an API response that points somewhere it should not go, and an
image host that answers with something other than the image. :class:`HostileImageHost`
plugs into the bundled simulator's one extension point (``Simulator(image_host=...)``,
:mod:`ideogram_pipeline.simulator.hooks`), so the URL policy and the download limits are
tested against real HTTP rather than mocks, while the shipped simulator knows nothing of it.

Usage::

    with running_simulator(config, image_host=HostileImageHost()) as sim:
        ...  # prompts carrying one of the triggers below misbehave

Triggers (one per prompt; anywhere in it):

==========================  ==============================================================
``[sim:foreign-url]``       the URL names ``https://images.attacker.example/...`` (RFC 2606:
                            never resolves), a host outside the allow-list
``[sim:private-url]``       the URL names ``https://169.254.169.254/latest/meta-data/...``,
                            the cloud metadata address
``[sim:redirect]``          the download answers 302 to the same image (``&hop=1``), once
``[sim:redirect-foreign]``  the download answers 302 to ``images.attacker.example``
``[sim:redirect-loop]``     the download redirects to itself forever (``hop`` counts up)
``[sim:huge]``              200 ``image/png``: a PNG signature then zeros, ``huge_bytes``
                            (default 64 MiB) streamed without a Content-Length
``[sim:not-png]``           200 ``text/html``: a sign-in page instead of the image
==========================  ==============================================================
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from ideogram_pipeline.simulator.hooks import HostedImage

__all__ = ["FOREIGN_HOST", "PRIVATE_HOST", "HostileImageHost", "HostileMode"]

#: Reserved for documentation (RFC 2606): never resolves, never belongs to anyone.
FOREIGN_HOST = "images.attacker.example"
#: The cloud metadata service every major cloud answers on.
PRIVATE_HOST = "169.254.169.254"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK = 64 * 1024


class HostileMode(StrEnum):
    """How one image's URL or download misbehaves; the value is the trigger's name."""

    FOREIGN_URL = "foreign-url"
    PRIVATE_URL = "private-url"
    REDIRECT = "redirect"
    REDIRECT_FOREIGN = "redirect-foreign"
    REDIRECT_LOOP = "redirect-loop"
    HUGE = "huge"
    NOT_PNG = "not-png"

    @classmethod
    def from_prompt(cls, prompt: str) -> HostileMode | None:
        """The first ``[sim:<mode>]`` trigger in ``prompt``, if any."""
        found = _TRIGGER.search(prompt)
        return cls(found.group(1)) if found else None


_TRIGGER = re.compile(r"\[sim:(" + "|".join(re.escape(m.value) for m in HostileMode) + r")\]")


@dataclass(frozen=True)
class HostileImageHost:
    """An :class:`~ideogram_pipeline.simulator.hooks.ImageHost` driven by prompt triggers."""

    #: Body size of a ``[sim:huge]`` download (streamed, no Content-Length).
    huge_bytes: int = 64 * 1024 * 1024

    def image_url(self, signed_url: str, image: HostedImage) -> str:
        mode = HostileMode.from_prompt(image.prompt)
        if mode is HostileMode.FOREIGN_URL:
            return f"https://{FOREIGN_HOST}/api/images/ephemeral/{image.image_id}.png"
        if mode is HostileMode.PRIVATE_URL:
            return (
                f"https://{PRIVATE_HOST}/latest/meta-data/iam/security-credentials/"
                f"{image.image_id}.png"
            )
        return signed_url  # the other modes misbehave when the URL is fetched

    def download(self, request: Request, image: HostedImage) -> Response | None:
        mode = HostileMode.from_prompt(image.prompt)
        raw_hop = request.query_params.get("hop", "")
        hop = int(raw_hop) if raw_hop.isascii() and raw_hop.isdigit() else 0
        if mode is HostileMode.REDIRECT:
            return None if hop else RedirectResponse(_with_hop(request, 1), status_code=302)
        if mode is HostileMode.REDIRECT_LOOP:
            return RedirectResponse(_with_hop(request, hop + 1), status_code=302)
        if mode is HostileMode.REDIRECT_FOREIGN:
            target = f"https://{FOREIGN_HOST}/stolen/{image.image_id}.png"
            return RedirectResponse(target, status_code=302)
        if mode is HostileMode.HUGE:
            return StreamingResponse(_endless_png(self.huge_bytes), media_type="image/png")
        if mode is HostileMode.NOT_PNG:
            page = b"<html><body><h1>Sign in</h1><p>Session expired.</p></body></html>"
            return Response(page, media_type="text/html")
        return None


def _with_hop(request: Request, hop: int) -> str:
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "hop"]
    query.append(("hop", str(hop)))
    return str(request.url.replace_query_params(**dict(query)))


async def _endless_png(total: int) -> AsyncIterator[bytes]:
    """A PNG signature, then zeros: ``total`` bytes, streamed without a Content-Length."""
    yield _PNG_SIGNATURE
    sent = len(_PNG_SIGNATURE)
    zeros = bytes(_CHUNK)
    while sent < total:
        piece = zeros[: min(_CHUNK, total - sent)]
        sent += len(piece)
        yield piece

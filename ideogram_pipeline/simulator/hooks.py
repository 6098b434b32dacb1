"""The simulator's one extension point: how its image host treats each image.

The shipped simulator is a well-behaved image host (signed, expiring URLs on its own
address). Tests that need a host which misbehaves (URLs on foreign or metadata addresses,
redirects, endless bodies, HTML instead of a PNG) pass an :class:`ImageHost` to
``Simulator(image_host=...)``; the misbehaviour itself lives with those tests
(``tests/support/hostile_host.py``), so the product carries no fault injection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["HostedImage", "ImageHost"]


@dataclass(frozen=True)
class HostedImage:
    """The image a URL names, as the host knows it.

    ``prompt`` is the prompt the response reports: with Magic Prompt on it is the
    expansion, which starts with the prompt as sent.
    """

    image_id: str
    prompt: str


class ImageHost(Protocol):
    """Decides the URL of each generated image and may answer its download instead."""

    def image_url(self, signed_url: str, image: HostedImage) -> str:
        """The URL the generate response names (``signed_url`` for a well-behaved host)."""
        ...

    def download(self, request: Request, image: HostedImage) -> Response | None:
        """An answer that replaces the image's bytes, or ``None`` to serve the image."""
        ...

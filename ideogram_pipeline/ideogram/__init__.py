"""Talking to Ideogram: the async client, its error tree, and the bundled simulator.

The simulator lives in ``ideogram.simulator`` and is imported only where it is used.
"""

from ideogram_pipeline.ideogram.client import IdeogramClient, RetryPolicy
from ideogram_pipeline.ideogram.errors import (
    APIStatusError,
    AuthError,
    CorruptImage,
    DownloadError,
    IdeogramError,
    ImageTooLarge,
    InvalidRequest,
    LinkExpired,
    OutOfCredits,
    RateLimited,
    SafetyRejected,
    ServerError,
    TransportError,
    UnexpectedContent,
    UntrustedUrl,
)
from ideogram_pipeline.ideogram.limiter import InflightLimiter
from ideogram_pipeline.ideogram.url_policy import UrlPolicy

__all__ = [
    "APIStatusError",
    "AuthError",
    "CorruptImage",
    "DownloadError",
    "IdeogramClient",
    "IdeogramError",
    "ImageTooLarge",
    "InflightLimiter",
    "InvalidRequest",
    "LinkExpired",
    "OutOfCredits",
    "RateLimited",
    "RetryPolicy",
    "SafetyRejected",
    "ServerError",
    "TransportError",
    "UnexpectedContent",
    "UntrustedUrl",
    "UrlPolicy",
]

"""Environment and configuration, read once and validated before anything is spent.

Settings are never read at import time: callers pass ``os.environ`` (or a test's dict) to
:func:`load_settings`, so tests need no module reloading and secrets stay in one object whose
``repr`` masks them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_STORAGE",
    "Settings",
    "SettingsError",
    "load_settings",
]

DEFAULT_BASE_URL = "https://api.ideogram.ai"
DEFAULT_MAX_INFLIGHT = 10
DEFAULT_STORAGE = "./data"


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _mask(secret: str | None) -> str:
    return "unset" if not secret else "****"


@dataclass(frozen=True)
class Settings:
    """Validated configuration. ``api_key is None`` means the bundled simulator is used."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    storage: str = DEFAULT_STORAGE
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_region: str | None = None

    @property
    def simulated(self) -> bool:
        return self.api_key is None

    @property
    def is_s3(self) -> bool:
        return self.storage.startswith("s3://")

    def __repr__(self) -> str:
        return (
            f"Settings(api_key={_mask(self.api_key)}, base_url={self.base_url!r}, "
            f"max_inflight={self.max_inflight}, storage={self.storage!r}, "
            f"aws_endpoint_url={self.aws_endpoint_url!r}, "
            f"aws_secret_access_key={_mask(self.aws_secret_access_key)})"
        )


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {value}")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment (``os.environ`` unless a mapping is given)."""
    env = os.environ if environ is None else environ
    storage = env.get("IDEOGRAM_STORAGE", "").strip() or DEFAULT_STORAGE
    if storage.startswith("s3://") and len(storage) <= len("s3://"):
        raise SettingsError("IDEOGRAM_STORAGE=s3:// needs a bucket, e.g. s3://my-bucket/prefix")
    base_url = (env.get("IDEOGRAM_BASE_URL", "").strip() or DEFAULT_BASE_URL).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise SettingsError(
            f"IDEOGRAM_BASE_URL must start with http:// or https://, got {base_url!r}"
        )
    return Settings(
        api_key=env.get("IDEOGRAM_API_KEY", "").strip() or None,
        base_url=base_url,
        max_inflight=_positive_int(env, "IDEOGRAM_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT),
        storage=storage,
        aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
    )

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
DEFAULT_FLUSH_EVERY = 500
#: ``async``: Ideogram's v2 asynchronous API where the model has it (the generation id is
#: recorded before waiting, so a crash never pays twice); ``sync``: the v1 endpoints.
API_MODES = ("async", "sync")
#: Where Ideogram serves images; the API base URL's own host is always allowed too.
DEFAULT_IMAGE_HOSTS = ("ideogram.ai", "*.ideogram.ai")
#: Largest image download accepted (bytes); a bigger body is aborted while streaming.
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
SSE_MODES = ("AES256", "aws:kms")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _mask(secret: str | None) -> str:
    return "unset" if not secret else "****"


@dataclass(frozen=True)
class Settings:
    """Validated configuration. ``api_key is None`` means the bundled simulator is used."""

    api_key: str | None = field(default=None, repr=False)
    #: ``IDEOGRAM_SIMULATOR=1``: the person asked for a simulator (the bundled one, or the
    #: one at ``IDEOGRAM_BASE_URL``); its images are recorded as simulated, never as real.
    simulator_requested: bool = False
    base_url: str = DEFAULT_BASE_URL
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    storage: str = DEFAULT_STORAGE
    aws_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_region: str | None = None
    api_mode: str = "async"
    #: Metadata rows buffered before a Parquet file is written: fewer, larger files versus
    #: less rework after a crash (the ledger makes that rework free of charge either way).
    flush_every: int = DEFAULT_FLUSH_EVERY
    #: How many batches may run at once on the account (the ``ideogram_account`` pool's
    #: limit in dagster.yaml); each gets an equal share of the in-flight limit, so the sum
    #: never exceeds it, on one machine or many.
    concurrent_batches: int = 1
    #: Image hosts downloads may come from, and the download size cap (url_policy.py).
    image_hosts: tuple[str, ...] = DEFAULT_IMAGE_HOSTS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    #: Server-side encryption of S3 uploads: ``AES256`` (SSE-S3) or ``aws:kms`` (SSE-KMS).
    s3_sse: str | None = None
    s3_sse_kms_key_id: str | None = None
    #: ``IDEOGRAM_PUBLIC_BASE_URL``: a CDN or public-bucket domain in front of the storage
    #: root, without a trailing slash. Set, every stored image's ``public_url`` is this plus
    #: its object key; unset, nothing public is implied (``share`` hands out one image).
    public_base_url: str | None = None

    @property
    def batch_inflight(self) -> int:
        """In-flight images one batch may use: its share of the account's limit."""
        return max(1, self.max_inflight // self.concurrent_batches)

    @property
    def simulated(self) -> bool:
        """Images come from a simulator: no key (the bundled one) or asked for by name.

        A simulated record never counts as done for a run against the real API."""
        return self.api_key is None or self.simulator_requested

    @property
    def simulator_at_base_url(self) -> bool:
        """A simulator the person started themselves, addressed with ``IDEOGRAM_BASE_URL``."""
        return self.simulator_requested and self.base_url != DEFAULT_BASE_URL

    @property
    def api_label(self) -> str:
        """Where images come from, as every output that announces a run says it."""
        if not self.simulated:
            return "Ideogram API"
        if self.simulator_at_base_url:
            return f"SIMULATED: simulator at {self.base_url} (IDEOGRAM_SIMULATOR=1)"
        why = "IDEOGRAM_SIMULATOR=1" if self.simulator_requested else "no IDEOGRAM_API_KEY"
        return f"SIMULATED: bundled simulator ({why})"

    @property
    def is_s3(self) -> bool:
        return self.storage.startswith("s3://")

    @property
    def s3_sse_spec(self) -> str | None:
        """What :class:`~ideogram_pipeline.storage.s3.S3Store` takes as ``sse``."""
        return self.s3_sse_kms_key_id or self.s3_sse

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


def _image_hosts(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("IDEOGRAM_IMAGE_HOSTS", "").strip()
    if not raw:
        return DEFAULT_IMAGE_HOSTS
    hosts = tuple(h.strip().lower().rstrip(".") for h in raw.split(",") if h.strip())
    for host in hosts:
        if "/" in host or "@" in host or " " in host or host.count("*") > (host[:2] == "*."):
            raise SettingsError(
                f"IDEOGRAM_IMAGE_HOSTS takes host names like 'ideogram.ai' or "
                f"'*.ideogram.ai', separated by commas; got {host!r}"
            )
    return hosts


def _sse(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    mode = env.get("IDEOGRAM_S3_SSE", "").strip() or None
    key_id = env.get("IDEOGRAM_S3_SSE_KMS_KEY_ID", "").strip() or None
    if mode is not None and mode not in SSE_MODES:
        raise SettingsError(f"IDEOGRAM_S3_SSE must be AES256 or aws:kms, got {mode!r}")
    if key_id is not None and mode == "AES256":
        raise SettingsError("IDEOGRAM_S3_SSE_KMS_KEY_ID needs IDEOGRAM_S3_SSE=aws:kms (or unset)")
    return ("aws:kms" if key_id else mode), key_id


def _public_base_url(env: Mapping[str, str]) -> str | None:
    """An http(s) URL with a host and no query or fragment, trailing slashes dropped (keys
    are joined with one ``/``); unset or blank is None."""
    from urllib.parse import urlsplit

    raw = env.get("IDEOGRAM_PUBLIC_BASE_URL", "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(
            "IDEOGRAM_PUBLIC_BASE_URL must be an http:// or https:// URL with a host, e.g. "
            f"https://cdn.example.com/images-root; got {raw!r}"
        )
    if parts.query or parts.fragment or any(ch.isspace() for ch in raw):
        raise SettingsError(
            "IDEOGRAM_PUBLIC_BASE_URL may not hold spaces, a query (?) or a fragment (#): "
            f"object keys are appended to it; got {raw!r}"
        )
    return raw.rstrip("/")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _simulator_requested(env: Mapping[str, str]) -> bool:
    raw = env.get("IDEOGRAM_SIMULATOR", "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise SettingsError(f"IDEOGRAM_SIMULATOR must be 1 or 0 (true/false), got {raw!r}")
    return raw in _TRUE


def _check_api_choice(env: Mapping[str, str], api_key: str | None, simulator: bool) -> None:
    """A base URL without a key is a mistake, not a wish for the simulator: refused.

    Silently falling back to the bundled simulator stored simulated images, at real prices,
    in a production history. The simulator is used without a key only when no base URL is
    set (the demo, a first try) or when the person asks for it by name.
    """
    if env.get("IDEOGRAM_BASE_URL", "").strip() and api_key is None and not simulator:
        raise SettingsError(
            "IDEOGRAM_BASE_URL is set but IDEOGRAM_API_KEY is not: set the API key to use "
            "that API, or IDEOGRAM_SIMULATOR=1 to use a simulator there (its images are "
            "marked SIMULATED and never count as real ones)"
        )


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
    api_mode = env.get("IDEOGRAM_API_MODE", "").strip().lower() or "async"
    if api_mode not in API_MODES:
        raise SettingsError(
            f"IDEOGRAM_API_MODE must be one of {', '.join(API_MODES)}, got {api_mode!r}"
        )
    sse, sse_kms_key_id = _sse(env)
    api_key = env.get("IDEOGRAM_API_KEY", "").strip() or None
    simulator = _simulator_requested(env)
    _check_api_choice(env, api_key, simulator)
    return Settings(
        simulator_requested=simulator,
        image_hosts=_image_hosts(env),
        max_image_bytes=_positive_int(env, "IDEOGRAM_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES),
        s3_sse=sse,
        s3_sse_kms_key_id=sse_kms_key_id,
        public_base_url=_public_base_url(env),
        api_mode=api_mode,
        flush_every=_positive_int(env, "IDEOGRAM_FLUSH_EVERY", DEFAULT_FLUSH_EVERY),
        concurrent_batches=_positive_int(env, "IDEOGRAM_CONCURRENT_BATCHES", 1),
        api_key=api_key,
        base_url=base_url,
        max_inflight=_positive_int(env, "IDEOGRAM_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT),
        storage=storage,
        aws_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
    )

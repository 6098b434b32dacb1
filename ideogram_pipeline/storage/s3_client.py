"""How the S3 store talks to a server: the URI, the boto3 client and its signing.

Kept apart from :mod:`ideogram_pipeline.storage.s3` because the history's sharing links and
the query sandbox need a client or a parsed root without a store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.config import Config

from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage.base import StorageError

if TYPE_CHECKING:
    from botocore.awsrequest import AWSRequest
    from botocore.config import _S3Dict  # the stubs' name for Config(s3=...)
    from mypy_boto3_s3 import S3Client

__all__ = ["make_s3_client", "parse_s3_uri", "sign_checksummed_payloads_unsigned"]

#: The operations whose bodies carry ``x-amz-checksum-sha256`` (see the store's writes).
_CHECKSUMMED_OPERATIONS = ("PutObject", "UploadPart")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://"):
        raise StorageError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"S3 URI {uri!r} has no bucket (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def make_s3_client(
    settings: Settings,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_attempts: int = 5,
    max_pool_connections: int = 32,
) -> S3Client:
    """A boto3 S3 client from the standard AWS settings.

    Unset keys and region fall back to boto3's own chain (profile, instance role). A custom
    endpoint gets path-style URLs (``http://host:port/bucket/key``): S3-compatible servers
    rarely have wildcard DNS for virtual-hosted buckets. Standard-mode retries back off on
    throttling and 5xx; the pool is big enough for a thread pool of 16-32 uploaders.
    """
    import boto3

    region = settings.aws_region or ("us-east-1" if settings.aws_endpoint_url else None)
    session = boto3.session.Session(
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=region,
    )
    config = Config(
        s3={"addressing_style": "path"} if settings.aws_endpoint_url else {},
        # SigV4 everywhere: botocore would otherwise presign custom endpoints with SigV2,
        # whose URLs carry no enforced expiry limit (see sharing.py).
        signature_version="s3v4",
        # total_max_attempts counts the first try too ("max_attempts" would mean retries).
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
    )
    return session.client("s3", endpoint_url=settings.aws_endpoint_url, config=config)


def sign_checksummed_payloads_unsigned(client: S3Client) -> None:
    """Make ``client`` sign ``UNSIGNED-PAYLOAD`` for writes that carry a SHA-256 checksum.

    Over plain HTTP botocore hashes every body a second time for SigV4. With a SHA-256
    checksum header (itself signed, and verified by the server) that hash adds no integrity:
    a changed body fails the checksum, a changed header fails the signature. botocore already
    skips it over HTTPS when a checksum header is present; this extends that to HTTP
    endpoints (SeaweedFS, MinIO), saving one SHA-256 of every image on each side. A CRC
    checksum is not enough for this (it can be forged), so only SHA-256 qualifies.
    Registering twice is harmless (the handler has a unique id).
    """
    for operation in _CHECKSUMMED_OPERATIONS:
        client.meta.events.register(
            f"before-sign.s3.{operation}",
            _skip_payload_hash,
            unique_id=f"ideogram-pipeline-skip-payload-hash-{operation}",
        )


#: A client built without ``s3`` options has ``Config.s3 is None``.
_S3_DEFAULTS: _S3Dict = {}


def _skip_payload_hash(request: AWSRequest, **_: Any) -> None:
    if "x-amz-checksum-sha256" not in request.headers:
        return
    config: Config | None = request.context.get("client_config")
    if config is not None:
        # merge() replaces the whole s3 dict: keep its other options (addressing style).
        current: _S3Dict = getattr(config, "s3", None) or _S3_DEFAULTS
        unsigned = Config(s3={**current, "payload_signing_enabled": False})
        request.context["client_config"] = config.merge(unsigned)

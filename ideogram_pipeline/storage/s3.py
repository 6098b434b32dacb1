"""Objects in an S3 bucket under a prefix (``s3://bucket/prefix``), through boto3.

Works against AWS S3 and S3-compatible stores (SeaweedFS, MinIO, R2) given an endpoint URL.
What each write guarantees, and why:

- **Whole objects.** One ``PutObject`` (or one ``CompleteMultipartUpload`` above
  :data:`MULTIPART_THRESHOLD`) makes the object appear at once: readers never see part of it.
- **Server-verified integrity.** Every write carries ``x-amz-checksum-sha256`` (per part for
  multipart); the server recomputes it and rejects the upload (``BadDigest``) if the bytes
  were damaged on the way. Reads ask for the checksum back, so botocore verifies downloads.
- **Create-only** writes send ``If-None-Match: *``: an existing key is never overwritten.
  A 412 is then checked: the stored object's SHA-256 (or its bytes) equal ours means it is a
  retry of our own write (the first response was lost) and counts as success; anything
  else raises :class:`ObjectExists`.
- **Servers without conditional writes.** :meth:`S3Store.preflight` writes its probe twice
  with ``If-None-Match``; a server that accepts the second write (ignores the header) or
  answers 501 switches the store to head-then-put. That fallback has a race (two writers
  can both see "absent"); it is safe here because image keys derive from unique ids.

Errors from botocore are translated in one place (:meth:`S3Store._error`) into
:class:`StorageError` / :class:`StoragePreflightError` messages that name the bucket, the
endpoint and the cause, and never contain the secret key.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import logging
import socket
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage.base import (
    ObjectExists,
    ObjectInfo,
    StorageError,
    StoragePreflightError,
)

__all__ = [
    "DELETE_BATCH",
    "MULTIPART_THRESHOLD",
    "PART_SIZE",
    "S3Store",
    "make_s3_client",
    "parse_s3_uri",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: Objects at least this big go up in parts: bounded request size, resumable by part.
MULTIPART_THRESHOLD = 8 * MiB
PART_SIZE = 8 * MiB
#: S3's limit of keys per DeleteObjects call.
DELETE_BATCH = 1000
#: The preflight gives up on an endpoint that does not accept a TCP connection this fast.
PREFLIGHT_CONNECT_TIMEOUT = 3.0

_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "TokenRefreshRequired",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
#: AWS answers 409 when another conditional write to the same key is in flight: try again.
_CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "OperationAborted"})
_UNSUPPORTED_CODES = frozenset({"NotImplemented", "501"})
_PERMISSION = {
    "write": "s3:PutObject",
    "read": "s3:GetObject",
    "delete": "s3:DeleteObject",
    "list": "s3:ListBucket",
}


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
) -> Any:
    """A boto3 S3 client from the standard AWS settings.

    Unset keys and region fall back to boto3's own chain (profile, instance role). A custom
    endpoint gets path-style URLs (``http://host:port/bucket/key``): S3-compatible servers
    rarely have wildcard DNS for virtual-hosted buckets. Standard-mode retries back off on
    throttling and 5xx; the pool is big enough for a thread pool of 16-32 uploaders.
    """
    import boto3

    s3_options: dict[str, Any] = {}
    if settings.aws_endpoint_url:
        s3_options["addressing_style"] = "path"
    region = settings.aws_region or ("us-east-1" if settings.aws_endpoint_url else None)
    session = boto3.session.Session(
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=region,
    )
    config = Config(
        s3=s3_options,
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


def _skip_payload_hash(request: Any, **_: Any) -> None:
    """Sign ``UNSIGNED-PAYLOAD`` for requests that carry ``x-amz-checksum-sha256``.

    Over plain HTTP botocore hashes every body a second time for SigV4. With a SHA-256
    checksum header (itself signed, and verified by the server) that hash adds no integrity:
    a changed body fails the checksum, a changed header fails the signature. botocore already
    skips it over HTTPS when a checksum header is present; this extends that to HTTP
    endpoints (SeaweedFS, MinIO), saving one SHA-256 of every image on each side. A CRC
    checksum is not enough for this (it can be forged), so only SHA-256 qualifies.
    """
    if "x-amz-checksum-sha256" not in request.headers:
        return
    config = request.context.get("client_config")
    if config is not None:
        s3 = {**(config.s3 or {}), "payload_signing_enabled": False}
        request.context["client_config"] = config.merge(Config(s3=s3))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class S3Store:
    """An :class:`~ideogram_pipeline.storage.base.ObjectStore` over ``s3://bucket/prefix``.

    ``client`` is any boto3 S3 client, e.g. ``dagster_aws.s3.S3Resource(...).get_client()``
    or :func:`make_s3_client`; it is thread-safe, so one store serves a pool of uploaders.

    Parameters:
        bucket, prefix: where keys live; key ``images/a.png`` is ``prefix/images/a.png``.
        root: the root as the user wrote it (defaults to ``s3://bucket/prefix``).
        sse: server-side encryption: ``"AES256"``, ``"aws:kms"`` or a KMS key id/ARN.
        preflight_client: a client with short timeouts and few retries for
            :meth:`preflight`, so a bad configuration fails in seconds, not minutes.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        root: str | None = None,
        sse: str | None = None,
        preflight_client: Any = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = root or f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.sse = sse
        self.preflight_client = preflight_client
        #: True while the server is believed to honour ``If-None-Match: *`` (see preflight).
        self.conditional_writes = True
        self.multipart_threshold = MULTIPART_THRESHOLD
        self.part_size = PART_SIZE
        self._secret: str | None = None  # only to scrub it from messages, never logged
        for operation in ("PutObject", "UploadPart"):
            client.meta.events.register(
                f"before-sign.s3.{operation}",
                _skip_payload_hash,
                unique_id=f"ideogram-pipeline-skip-payload-hash-{operation}",
            )

    @classmethod
    def from_settings(cls, settings: Settings, *, sse: str | None = None) -> S3Store:
        """The store for ``settings.storage`` with clients built from the AWS settings."""
        bucket, prefix = parse_s3_uri(settings.storage)
        store = cls(
            make_s3_client(settings),
            bucket,
            prefix,
            root=settings.storage.rstrip("/"),
            sse=sse,
            preflight_client=make_s3_client(
                settings, connect_timeout=PREFLIGHT_CONNECT_TIMEOUT, read_timeout=10, max_attempts=2
            ),
        )
        store._secret = settings.aws_secret_access_key
        return store

    def __repr__(self) -> str:
        return f"S3Store({self.root!r}, endpoint={self.client.meta.endpoint_url!r})"

    # -- keys ---------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"key {key!r} escapes the storage root")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _base(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    # -- errors -------------------------------------------------------------------------

    def _error(
        self,
        exc: Exception,
        action: str,
        key: str | None = None,
        kind: type[StorageError] = StorageError,
    ) -> StorageError:
        """The one place botocore errors become messages a user can act on."""
        where = self.uri(key) if key is not None else self.root
        endpoint = self.client.meta.endpoint_url
        if isinstance(exc, ClientError):
            code = _code(exc)
            detail = exc.response.get("Error", {}).get("Message") or ""
            if code == "NoSuchBucket":
                text = f"bucket {self.bucket} does not exist (endpoint {endpoint})"
            elif code in _CREDENTIAL_CODES:
                text = (
                    f"the AWS credentials were rejected by {endpoint} ({code}): "
                    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )
            elif code in _DENIED_CODES:
                text = (
                    f"access denied: cannot {action} {where} ({code}): wrong credentials, or "
                    f"they lack the {_PERMISSION.get(action, 's3')} permission"
                )
            else:
                text = f"cannot {action} {where}: {code} {detail}".rstrip()
        elif isinstance(exc, BotoConnectionError | HTTPClientError):
            text = f"cannot reach S3 endpoint URL: {endpoint} ({exc})"
        elif isinstance(exc, NoCredentialsError | PartialCredentialsError):
            text = (
                f"no usable AWS credentials for {where} ({exc}): set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or configure a profile or role"
            )
        else:
            text = f"cannot {action} {where}: {exc}"
        if self._secret:
            text = text.replace(self._secret, "****")
        return kind(text)

    # -- writes -------------------------------------------------------------------------

    def _sse_args(self) -> dict[str, str]:
        if not self.sse:
            return {}
        if self.sse in ("AES256", "aws:kms"):
            return {"ServerSideEncryption": self.sse}
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.sse}

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        create_only: bool = False,
        cache_control: str | None = None,
    ) -> None:
        full = self._key(key)
        digest = hashlib.sha256(data).digest()
        extra: dict[str, Any] = {"ContentType": content_type, **self._sse_args()}
        if cache_control:
            extra["CacheControl"] = cache_control
        if metadata:
            extra["Metadata"] = {str(k): str(v) for k, v in metadata.items()}

        for attempt in range(3):
            conditional = create_only and self.conditional_writes
            # Without conditional writes: head-then-put (see the module docstring). For big
            # objects look first too, rather than upload every part only to be refused.
            big = len(data) >= self.multipart_threshold
            if create_only and (big or not conditional) and self._settle(key, full, data, digest):
                return
            try:
                self._upload(full, data, digest, extra, conditional)
                return
            except ClientError as exc:
                code = _code(exc)
                if conditional and code in _PRECONDITION_CODES:
                    if self._settle(key, full, data, digest):
                        return
                    continue  # the object vanished in between: write again
                if code == "NoSuchUpload" and self._stored_already(full, data, digest):
                    return  # a retried CompleteMultipartUpload whose first try succeeded
                if conditional and code in _CONFLICT_CODES:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if conditional and code in _UNSUPPORTED_CODES:
                    log.warning("%s does not support If-None-Match; using head-then-put", self)
                    self.conditional_writes = False
                    continue
                raise self._error(exc, "write", key) from exc
            except BotoCoreError as exc:
                raise self._error(exc, "write", key) from exc
        raise StorageError(f"cannot write {self.uri(key)}: it kept changing under other writers")

    def _settle(self, key: str, full: str, data: bytes, digest: bytes) -> bool:
        """For create-only: True if ``data`` is already stored, raise if other bytes are."""
        try:
            same = self._same_object(full, data, digest)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "read", key) from exc
        if same is False:
            raise ObjectExists(f"{self.uri(key)} already exists with different bytes")
        return bool(same)

    def _upload(
        self, full: str, data: bytes, digest: bytes, extra: dict[str, Any], conditional: bool
    ) -> None:
        condition = {"IfNoneMatch": "*"} if conditional else {}
        if len(data) < self.multipart_threshold:
            self.client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                ChecksumSHA256=_b64(digest),
                **extra,
                **condition,
            )
            return
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=full, ChecksumAlgorithm="SHA256", **extra
        )["UploadId"]
        try:
            parts = []
            for number, offset in enumerate(range(0, len(data), self.part_size), start=1):
                chunk = data[offset : offset + self.part_size]  # one part in memory at a time
                checksum = _b64(hashlib.sha256(chunk).digest())
                etag = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ChecksumSHA256=checksum,
                )["ETag"]
                parts.append({"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum})
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        except BaseException:
            # Parts of an unfinished upload are invisible but billed: drop them.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            raise

    def _stored_already(self, full: str, data: bytes, digest: bytes) -> bool:
        try:
            return bool(self._same_object(full, data, digest))
        except (ClientError, BotoCoreError):
            return False

    def _same_object(self, full: str, data: bytes, digest: bytes) -> bool | None:
        """Whether the stored object equals ``data``; ``None`` if there is none.

        A single-part object's stored SHA-256 decides without downloading it; a multipart
        one (composite checksum ``...-N``) or one without a checksum is compared byte by
        byte, streamed in 1 MiB chunks so memory stays bounded.
        """
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                return None
            raise
        if head["ContentLength"] != len(data):
            return False
        stored = head.get("ChecksumSHA256")
        if stored and "-" not in stored:
            return bool(stored == _b64(digest))
        body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
        view, offset = memoryview(data), 0
        with contextlib.closing(body):
            for chunk in body.iter_chunks(MiB):
                if view[offset : offset + len(chunk)] != chunk:
                    return False
                offset += len(chunk)
        return offset == len(data)

    # -- reads, listing, deletion -------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        try:
            # ChecksumMode makes botocore verify the stored SHA-256 against what it received.
            response = self.client.get_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
            return bytes(response["Body"].read())
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                raise StorageError(f"no object at {key}") from None
            raise self._error(exc, "read", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from exc

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY_CODES:
                return None
            raise self._error(exc, "read", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from exc
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            last_modified=response["LastModified"].timestamp(),
        )

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._base()
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"][len(base) :],
                        size=int(item["Size"]),
                        last_modified=item["LastModified"].timestamp(),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", prefix or None) from exc

    def delete(self, keys: builtins.list[str]) -> None:  # builtins: `list` is a method here
        unique = builtins.list(dict.fromkeys(keys))
        for start in range(0, len(unique), DELETE_BATCH):
            batch = unique[start : start + DELETE_BATCH]
            objects = [{"Key": self._key(key)} for key in batch]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc, "delete", batch[0]) from exc
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise StorageError(
                    f"could not delete {len(errors)} of {len(batch)} objects in {self.root}; "
                    f"first: {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
                )

    # -- preflight ----------------------------------------------------------------------

    def _check_reachable(self, endpoint: str) -> None:
        """A plain TCP connect, so an unreachable endpoint fails in seconds, not retries."""
        url = urllib.parse.urlsplit(endpoint)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        if url.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
            return  # through a proxy a direct connect proves nothing; botocore will tell
        try:
            socket.create_connection((host, port), timeout=PREFLIGHT_CONNECT_TIMEOUT).close()
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise StoragePreflightError(
                f"cannot reach S3 endpoint URL: {endpoint} ({reason})"
            ) from exc

    def preflight(self) -> None:
        """Prove, before any money is spent, that the root is reachable, readable, writable.

        Checks in order: the endpoint accepts connections; a probe object under the prefix
        can be written (bucket exists, credentials valid, write permission), read back and
        deleted. A second create-only write of the probe shows whether the server honours
        ``If-None-Match``; if not, :attr:`conditional_writes` is switched off.
        """
        client = self.preflight_client or self.client
        self._check_reachable(client.meta.endpoint_url)
        probe = f".preflight/{uuid.uuid4().hex}"
        full = self._key(probe)
        first, second = b"preflight 1 " + full.encode(), b"preflight 2 " + full.encode()

        def fail(exc: Exception, action: str) -> StoragePreflightError:
            error = self._error(exc, action, probe, StoragePreflightError)
            assert isinstance(error, StoragePreflightError)
            return error

        try:
            client.put_object(Bucket=self.bucket, Key=full, Body=first)
        except (ClientError, BotoCoreError) as exc:
            raise fail(exc, "write") from exc
        expected = first
        try:
            client.put_object(Bucket=self.bucket, Key=full, Body=second, IfNoneMatch="*")
            self.conditional_writes, expected = False, second  # the header was ignored
        except ClientError as exc:
            code = _code(exc)
            if code in _UNSUPPORTED_CODES:
                self.conditional_writes = False
            elif code not in _PRECONDITION_CODES:
                raise fail(exc, "write") from exc
        except BotoCoreError as exc:
            raise fail(exc, "write") from exc
        if not self.conditional_writes:
            log.warning("%s ignores If-None-Match: create-only writes use head-then-put", self)
        try:
            stored = client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise fail(exc, "read") from exc
        if stored != expected:
            raise StoragePreflightError(f"{self.uri(probe)} did not read back what was written")
        try:
            response = client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": full}], "Quiet": True}
            )
        except (ClientError, BotoCoreError) as exc:
            raise fail(exc, "delete") from exc
        if response.get("Errors"):
            error = response["Errors"][0]
            raise StoragePreflightError(
                f"cannot delete {self.uri(probe)}: {error.get('Code')} {error.get('Message', '')}"
            )

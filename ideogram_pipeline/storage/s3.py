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

The client and its signing live in :mod:`.s3_client`, the translation of botocore's errors
into messages in :mod:`.s3_errors`, the preflight probe in :mod:`.s3_preflight`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage.base import (
    ObjectExists,
    ObjectInfo,
    StorageError,
    StoragePreflightError,
)
from ideogram_pipeline.storage.s3_client import (
    make_s3_client,
    parse_s3_uri,
    sign_checksummed_payloads_unsigned,
)
from ideogram_pipeline.storage.s3_errors import (
    CONFLICT_CODES,
    MISSING_KEY_CODES,
    PRECONDITION_CODES,
    UNSUPPORTED_CODES,
    S3Place,
    describe_s3_error,
    error_code,
)
from ideogram_pipeline.storage.s3_preflight import (
    PREFLIGHT_CONNECT_TIMEOUT,
    check_reachable,
    probe_root,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectIdentifierTypeDef

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
        secret: the secret access key, only so that no error message ever shows it.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "",
        *,
        root: str | None = None,
        sse: str | None = None,
        preflight_client: S3Client | None = None,
        secret: str | None = None,
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
        #: Only to scrub it from messages, never logged.
        self._secret = secret
        sign_checksummed_payloads_unsigned(client)

    @classmethod
    def from_settings(cls, settings: Settings, *, sse: str | None = None) -> S3Store:
        """The store for ``settings.storage`` with clients built from the AWS settings."""
        bucket, prefix = parse_s3_uri(settings.storage)
        return cls(
            make_s3_client(settings),
            bucket,
            prefix,
            root=settings.storage.rstrip("/"),
            sse=sse,
            preflight_client=make_s3_client(
                settings, connect_timeout=PREFLIGHT_CONNECT_TIMEOUT, read_timeout=10, max_attempts=2
            ),
            secret=settings.aws_secret_access_key,
        )

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
    ) -> StorageError:
        return StorageError(self._error_message(exc, action, key))

    def _error_message(self, exc: Exception, action: str, key: str | None) -> str:
        where = self.uri(key) if key is not None else self.root
        place = S3Place(self.bucket, self.client.meta.endpoint_url, self._secret)
        return describe_s3_error(exc, action=action, where=where, place=place)

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
                code = error_code(exc)
                if conditional and code in PRECONDITION_CODES:
                    if self._settle(key, full, data, digest):
                        return
                    continue  # the object vanished in between: write again
                if code == "NoSuchUpload" and self._stored_already(full, data, digest):
                    return  # a retried CompleteMultipartUpload whose first try succeeded
                if conditional and code in CONFLICT_CODES:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if conditional and code in UNSUPPORTED_CODES:
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
        # Keyword arguments for boto3: IfNoneMatch must be absent, not None, when unconditional.
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if conditional else {}
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
            parts: list[CompletedPartTypeDef] = []
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
            if error_code(exc) in MISSING_KEY_CODES:
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
            if error_code(exc) in MISSING_KEY_CODES:
                raise StorageError(f"no object at {key}") from None
            raise self._error(exc, "read", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from exc

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if error_code(exc) in MISSING_KEY_CODES:
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

    def delete(self, keys: Iterable[str]) -> None:
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), DELETE_BATCH):
            batch = unique[start : start + DELETE_BATCH]
            objects: list[ObjectIdentifierTypeDef] = [{"Key": self._key(key)} for key in batch]
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

    def preflight(self) -> None:
        """Prove, before any money is spent, that the root is reachable, readable, writable.

        The endpoint must accept connections, then a probe object under the prefix is
        written, rewritten create-only, read back and deleted
        (:func:`~ideogram_pipeline.storage.s3_preflight.probe_root`). A server that ignores
        ``If-None-Match`` switches :attr:`conditional_writes` off.
        """
        client = self.preflight_client or self.client
        check_reachable(client.meta.endpoint_url)
        probe = f".preflight/{uuid.uuid4().hex}"

        def fail(exc: Exception, action: str) -> StoragePreflightError:
            return StoragePreflightError(self._error_message(exc, action, probe))

        if not probe_root(client, self.bucket, self._key(probe), self.uri(probe), fail):
            self.conditional_writes = False
            log.warning("%s ignores If-None-Match: create-only writes use head-then-put", self)

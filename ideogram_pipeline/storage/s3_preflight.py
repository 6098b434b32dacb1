"""The S3 store's preflight: prove a root works before any money is spent.

A bad bucket, wrong keys or a missing permission must fail the run in seconds, naming the
problem, rather than after images were paid for and could not be stored. The probe also
finds out whether the server honours ``If-None-Match: *`` (create-only writes).
"""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from ideogram_pipeline.storage.base import StoragePreflightError
from ideogram_pipeline.storage.s3_errors import (
    PRECONDITION_CODES,
    UNSUPPORTED_CODES,
    error_code,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["PREFLIGHT_CONNECT_TIMEOUT", "check_reachable", "probe_root"]

#: The preflight gives up on an endpoint that does not accept a TCP connection this fast.
PREFLIGHT_CONNECT_TIMEOUT = 3.0

#: Turns a botocore error during ``action`` ("write", "read", "delete") into the error to raise.
Failure = Callable[[Exception, str], StoragePreflightError]


def check_reachable(endpoint: str) -> None:
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
        raise StoragePreflightError(f"cannot reach S3 endpoint URL: {endpoint} ({reason})") from exc


def probe_root(client: S3Client, bucket: str, key: str, uri: str, fail: Failure) -> bool:
    """Write ``key``, write it again create-only, read it back and delete it.

    The first write proves the bucket exists, the credentials are valid and may write; the
    read and the delete prove those permissions. Returns whether the server honours
    ``If-None-Match`` (refused the second write with 412) rather than ignoring it or
    answering 501. ``uri`` names the probe in messages.
    """
    first, second = b"preflight 1 " + key.encode(), b"preflight 2 " + key.encode()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=first)
    except (ClientError, BotoCoreError) as exc:
        raise fail(exc, "write") from exc
    honoured, expected = True, first
    try:
        client.put_object(Bucket=bucket, Key=key, Body=second, IfNoneMatch="*")
        honoured, expected = False, second  # the header was ignored
    except ClientError as exc:
        code = error_code(exc)
        if code in UNSUPPORTED_CODES:
            honoured = False
        elif code not in PRECONDITION_CODES:
            raise fail(exc, "write") from exc
    except BotoCoreError as exc:
        raise fail(exc, "write") from exc
    try:
        stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise fail(exc, "read") from exc
    if stored != expected:
        raise StoragePreflightError(f"{uri} did not read back what was written")
    try:
        response = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key}], "Quiet": True}
        )
    except (ClientError, BotoCoreError) as exc:
        raise fail(exc, "delete") from exc
    if response.get("Errors"):
        error = response["Errors"][0]
        raise StoragePreflightError(
            f"cannot delete {uri}: {error.get('Code')} {error.get('Message', '')}"
        )
    return honoured

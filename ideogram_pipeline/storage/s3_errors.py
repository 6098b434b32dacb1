"""botocore's errors, told as messages a user can act on.

Every failure of the S3 store passes through :func:`describe_s3_error`, so each message
names the bucket, the endpoint and the cause the same way, and none contains the secret key.
The caller picks the exception (a :class:`StorageError`, or a preflight's
:class:`StoragePreflightError`) and chains the botocore error to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

__all__ = [
    "CONFLICT_CODES",
    "MISSING_KEY_CODES",
    "PRECONDITION_CODES",
    "UNSUPPORTED_CODES",
    "S3Place",
    "describe_s3_error",
    "error_code",
]

MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
#: AWS answers 409 when another conditional write to the same key is in flight: try again.
CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "OperationAborted"})
UNSUPPORTED_CODES = frozenset({"NotImplemented", "501"})
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
#: The IAM permission each action of the store needs, named when access is denied.
_PERMISSION = {
    "write": "s3:PutObject",
    "read": "s3:GetObject",
    "delete": "s3:DeleteObject",
    "list": "s3:ListBucket",
}


@dataclass(frozen=True)
class S3Place:
    """Where a failed request went: what a message names, and the secret it must not."""

    bucket: str
    endpoint: str
    secret: str | None = None


def error_code(exc: ClientError) -> str:
    """S3's error code (``NoSuchKey``, ``412``...), or ``""`` when the answer had none."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def describe_s3_error(
    exc: Exception,
    *,
    action: str,
    where: str,
    place: S3Place,
) -> str:
    """What went wrong when ``exc`` was raised trying to ``action`` (write, read...) ``where``."""
    endpoint = place.endpoint
    if isinstance(exc, ClientError):
        code = error_code(exc)
        detail = exc.response.get("Error", {}).get("Message") or ""
        if code == "NoSuchBucket":
            text = f"bucket {place.bucket} does not exist (endpoint {endpoint})"
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
    if place.secret:
        text = text.replace(place.secret, "****")
    return text

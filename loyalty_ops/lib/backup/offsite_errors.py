"""How S3 failures of the offsite copy are explained (where copies go is ``location.BackupLocation``).

Every S3 failure of the offsite copy becomes an :class:`OffsiteError` whose message names the bucket and
key and says what to check; a raw ``S3UploadFailedError`` or ``ClientError`` never reaches on-call.
Retries are botocore's own (the client's retry configuration, ``standard`` mode): nothing here loops.
"""

from __future__ import annotations

from typing import Any

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

# What an S3 call can raise: botocore's errors and boto3's transfer errors (S3UploadFailedError).
S3_ERRORS = (ClientError, BotoCoreError, Boto3Error)
SHA256_METADATA = "sha256"  # user metadata (x-amz-meta-sha256): the hex SHA-256 of the whole object


class OffsiteError(RuntimeError):
    """The offsite copy failed; the message names the bucket/key and what to check."""


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    # S3UploadFailedError carries only text: "Failed to upload X to B/K: An error occurred (Code) when ..."
    text = str(exc)
    if "An error occurred (" in text:
        return text.split("An error occurred (", 1)[1].split(")", 1)[0]
    return type(exc).__name__


def explain(exc: BaseException, bucket: str) -> str:
    """What went wrong and what to check, without the SDK's stack of wrappers."""
    code = error_code(exc)
    if code in ("NoSuchBucket", "404", "NotFound"):
        return f"bucket {bucket!r} does not exist; create it or fix LOYALTY_S3_BUCKET"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken", "ExpiredToken"):
        return (
            f"S3 refused the credentials for bucket {bucket!r} ({code}); check AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY (or the instance role) and the bucket policy"
        )
    if isinstance(exc, EndpointConnectionError) or "Could not connect to the endpoint" in str(exc):
        return "cannot reach the S3 endpoint; check AWS_ENDPOINT_URL and the network"
    if code in ("InternalError", "500", "502", "503", "ServiceUnavailable", "SlowDown", "RequestTimeout") or (
        "reached max retries" in str(exc)
    ):
        return (
            f"S3 kept failing ({code}) after botocore's retries; check the S3 endpoint's health "
            "(AWS status page or the proxy/endpoint logs) and run offsite_backup_copy again"
        )
    return f"{code}: {str(exc)[:300]}"


def s3_failure(action: str, bucket: str, key: str, exc: BaseException) -> OffsiteError:
    """An OffsiteError for ``action`` on ``s3://bucket/key`` that says what to check."""
    return OffsiteError(f"{action} s3://{bucket}/{key} failed: {explain(exc, bucket)}")


def check_bucket(client: Any, bucket: str) -> None:
    """Fail fast, before any upload, if the bucket is missing or the credentials are wrong."""
    try:
        client.head_bucket(Bucket=bucket)
    except S3_ERRORS as exc:
        raise OffsiteError(explain(exc, bucket)) from None

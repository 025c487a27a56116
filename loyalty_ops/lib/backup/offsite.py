"""The offsite copy: upload a backup and its sidecars to S3, then verify what S3 holds.

Uses boto3's managed transfer (multipart above a threshold, so files over 5 GB work), SHA-256 checksums,
server-side encryption and a storage class. After the upload the object is HEADed and its size and
SHA-256 checksum are compared with values computed here from the local file, because an S3-compatible
endpoint is not trusted to have checked them (moto, for one, does not). Failed multipart uploads are
aborted by the transfer manager; whole uploads are retried with backoff on transient errors.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from loyalty_ops.lib.backup.naming import SIDECAR_SUFFIX
from loyalty_ops.lib.progress import ProgressMeter, ProgressSnapshot

MULTIPART_CHUNK_BYTES = 64 * 1024 * 1024
SSE_CHOICES = ("AES256", "aws:kms")
STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
)
_TRANSIENT_CODES = {"RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable", "503", "500", "Throttling"}


class OffsiteError(RuntimeError):
    """The offsite copy failed; the message names the bucket/key and what to check."""


@dataclass(frozen=True)
class OffsiteTarget:
    bucket: str
    prefix: str = "backups/"
    sse: str = "AES256"
    kms_key_id: Optional[str] = None
    storage_class: str = "STANDARD"

    def validate(self) -> None:
        if self.sse not in SSE_CHOICES:
            raise OffsiteError(f"LOYALTY_S3_SSE must be one of {', '.join(SSE_CHOICES)}, got {self.sse!r}")
        if self.sse == "AES256" and self.kms_key_id:
            raise OffsiteError("LOYALTY_S3_KMS_KEY_ID is set but LOYALTY_S3_SSE is AES256; set LOYALTY_S3_SSE=aws:kms")
        if self.storage_class not in STORAGE_CLASSES:
            raise OffsiteError(
                f"LOYALTY_S3_STORAGE_CLASS must be one of {', '.join(STORAGE_CLASSES)}, got {self.storage_class!r}"
            )

    def extra_args(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.sse, "StorageClass": self.storage_class, "ChecksumAlgorithm": "SHA256"}
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args


@dataclass(frozen=True)
class UploadedObject:
    bucket: str
    key: str
    bytes: int
    checksum_sha256: str  # as S3 reports it (base64, "-N" suffix for multipart)
    sha256_hex: str
    verified: bool
    duration_s: float
    attempts: int
    sidecar_keys: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def expected_s3_checksum(path: Path, chunk_bytes: int = MULTIPART_CHUNK_BYTES, threshold: Optional[int] = None) -> str:
    """The ChecksumSHA256 S3 reports for this file uploaded with our transfer settings.

    A single-part object carries the SHA-256 of its bytes; a multipart object carries the SHA-256 of the
    parts' binary digests, suffixed with ``-<parts>``.
    """
    size = Path(path).stat().st_size
    threshold = chunk_bytes if threshold is None else threshold
    digests = []
    whole = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digests.append(hashlib.sha256(block).digest())
            whole.update(block)
    if size < threshold:
        return base64.b64encode(whole.digest()).decode()
    return f"{base64.b64encode(hashlib.sha256(b''.join(digests)).digest()).decode()}-{len(digests)}"


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return type(exc).__name__


def _explain(exc: BaseException, bucket: str) -> str:
    code = _error_code(exc)
    if code in ("NoSuchBucket", "404", "NotFound"):
        return f"bucket {bucket!r} does not exist; create it or fix LOYALTY_S3_BUCKET"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken", "ExpiredToken"):
        return (
            f"S3 refused the credentials for bucket {bucket!r} ({code}); check AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY (or the instance role) and the bucket policy"
        )
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach the S3 endpoint ({exc}); check AWS_ENDPOINT_URL and the network"
    return f"{code}: {exc}"


def check_bucket(client: Any, bucket: str) -> None:
    """Fail fast, before any upload, if the bucket is missing or the credentials are wrong."""
    try:
        client.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise OffsiteError(_explain(exc, bucket)) from None


def upload_backup(
    client: Any,
    target: OffsiteTarget,
    path: Path,
    key: str,
    sha256_hex: str,
    *,
    sidecars: tuple[Path, ...] = (),
    on_progress: Optional[Callable[[ProgressSnapshot], None]] = None,
    progress_interval_s: float = 10.0,
    max_attempts: int = 4,
    backoff_s: float = 2.0,
    chunk_bytes: int = MULTIPART_CHUNK_BYTES,
    log: Callable[[str], None] = lambda _m: None,
) -> UploadedObject:
    """Upload ``path`` to ``key`` (plus sidecars next to it), then HEAD and verify size and checksum."""
    target.validate()
    path = Path(path)
    check_bucket(client, target.bucket)
    size = path.stat().st_size
    config = TransferConfig(multipart_threshold=chunk_bytes, multipart_chunksize=chunk_bytes, max_concurrency=4)
    extra = dict(target.extra_args())
    extra["Metadata"] = {"sha256": sha256_hex}
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        meter = ProgressMeter("upload", on_progress, expected_bytes=size, interval_s=progress_interval_s)
        try:
            client.upload_file(str(path), target.bucket, key, ExtraArgs=extra, Callback=meter.add, Config=config)
            break
        except (ClientError, BotoCoreError) as exc:
            code = _error_code(exc)
            transient = code in _TRANSIENT_CODES or isinstance(exc, EndpointConnectionError) or "S3UploadFailedError" in type(exc).__name__
            if attempt >= max_attempts or not transient:
                raise OffsiteError(f"upload of {path.name} to s3://{target.bucket}/{key} failed: {_explain(exc, target.bucket)}") from None
            delay = backoff_s * 2 ** (attempt - 1)
            log(f"upload attempt {attempt} failed ({code}); retrying in {delay:.0f} s")
            time.sleep(delay)
        except Exception as exc:  # s3transfer wraps client errors in S3UploadFailedError
            if attempt >= max_attempts:
                raise OffsiteError(f"upload of {path.name} to s3://{target.bucket}/{key} failed: {exc}") from None
            delay = backoff_s * 2 ** (attempt - 1)
            log(f"upload attempt {attempt} failed ({exc}); retrying in {delay:.0f} s")
            time.sleep(delay)
    meter.finish()

    sidecar_keys = []
    for sidecar in sidecars:
        sidecar_key = key + sidecar.name[len(path.name):]
        client.upload_file(str(sidecar), target.bucket, sidecar_key, ExtraArgs=target.extra_args())
        sidecar_keys.append(sidecar_key)

    remote_size, remote_checksum = verify_remote_copy(client, target.bucket, key, path, sha256_hex, chunk_bytes)
    return UploadedObject(
        bucket=target.bucket,
        key=key,
        bytes=remote_size,
        checksum_sha256=remote_checksum,
        sha256_hex=sha256_hex,
        verified=True,
        duration_s=time.monotonic() - started,
        attempts=attempt,
        sidecar_keys=tuple(sidecar_keys),
    )


def verify_remote_copy(
    client: Any, bucket: str, key: str, path: Path, sha256_hex: str, chunk_bytes: int = MULTIPART_CHUNK_BYTES
) -> tuple[int, str]:
    """HEAD the object and compare its size, ChecksumSHA256 and sha256 metadata with the local file.

    Returns (size, ChecksumSHA256) or raises OffsiteError naming every difference.
    """
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except (ClientError, BotoCoreError) as exc:
        raise OffsiteError(f"s3://{bucket}/{key} cannot be read back after the upload: {_explain(exc, bucket)}") from None
    size = Path(path).stat().st_size
    remote_size = int(head["ContentLength"])
    remote_checksum = head.get("ChecksumSHA256") or ""
    expected_checksum = expected_s3_checksum(path, chunk_bytes)
    problems = []
    if remote_size != size:
        problems.append(f"size {remote_size} != local {size}")
    # Some S3-compatible stores omit the "-<parts>" suffix of a multipart checksum; the digest must match.
    if remote_checksum.split("-")[0] != expected_checksum.split("-")[0]:
        problems.append(f"ChecksumSHA256 {remote_checksum or 'missing'} != expected {expected_checksum}")
    if head.get("Metadata", {}).get("sha256") != sha256_hex:
        problems.append("sha256 metadata missing or different")
    if problems:
        raise OffsiteError(f"s3://{bucket}/{key} does not match the local backup: {'; '.join(problems)}")
    return remote_size, remote_checksum


def sidecar_paths(path: Path) -> tuple[Path, ...]:
    return tuple(p for p in (Path(str(path) + SIDECAR_SUFFIX), Path(str(path) + ".manifest.json")) if p.exists())

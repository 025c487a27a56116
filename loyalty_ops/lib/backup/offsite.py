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

MULTIPART_CHUNK_BYTES = 32 * 1024 * 1024
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
    config = TransferConfig(multipart_threshold=chunk_bytes, multipart_chunksize=chunk_bytes, max_concurrency=2)
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
    client: Any,
    bucket: str,
    key: str,
    path: Path,
    sha256_hex: str,
    chunk_bytes: int = MULTIPART_CHUNK_BYTES,
    threshold: Optional[int] = None,
    expected_checksum: Optional[str] = None,
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
    expected_checksum = expected_checksum or expected_s3_checksum(path, chunk_bytes, threshold)
    problems = []
    if remote_size != size:
        problems.append(f"size {remote_size} != local {size}")
    # Some S3-compatible stores omit the "-<parts>" suffix of a multipart checksum; the digest must match.
    if remote_checksum.split("-")[0] != expected_checksum.split("-")[0]:
        problems.append(f"ChecksumSHA256 {remote_checksum or 'missing'} != expected {expected_checksum}")
    # A streamed upload starts before the file's hash is known, so it carries no sha256 metadata;
    # the checksum comparison above is what proves the content. Metadata, when present, must agree.
    if head.get("Metadata", {}).get("sha256", sha256_hex) != sha256_hex:
        problems.append("sha256 metadata differs from the local file's")
    if problems:
        raise OffsiteError(f"s3://{bucket}/{key} does not match the local backup: {'; '.join(problems)}")
    return remote_size, remote_checksum


def sidecar_paths(path: Path) -> tuple[Path, ...]:
    return tuple(p for p in (Path(str(path) + SIDECAR_SUFFIX), Path(str(path) + ".manifest.json")) if p.exists())


STREAM_PART_MIN_BYTES = 8 * 1024 * 1024
STREAM_PART_MAX_BYTES = 32 * 1024 * 1024  # bounds memory: at most three parts are held at once
MAX_PARTS = 10_000


def streaming_part_bytes(expected_bytes: Optional[int]) -> Optional[int]:
    """Part size for a streamed upload, or None when the object could outgrow 10,000 bounded parts."""
    expected = expected_bytes or 0
    needed = -(-int(expected * 1.2) // (MAX_PARTS - 500))
    if needed > STREAM_PART_MAX_BYTES:
        return None
    mib = 1024 * 1024
    return max(STREAM_PART_MIN_BYTES, -(-needed // mib) * mib)


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload whose parts are all in S3 but which is not completed (so not visible) yet."""

    bucket: str
    key: str
    upload_id: str
    parts: int
    part_bytes: int
    bytes: int


class StreamingUpload:
    """Uploads a backup to S3 *while it is being written*, as a multipart upload left incomplete.

    An incomplete multipart upload is invisible in the bucket: the object appears only when
    :func:`complete_pending_upload` runs after the integrity checks passed; a failed check calls
    :func:`abort_pending_upload`. A part that cannot be uploaded after retries turns the streaming off
    (the upload is aborted and the offsite step uploads the finished file instead); it never fails the
    backup itself. Memory is bounded by three parts.
    """

    def __init__(
        self,
        client: Any,
        target: OffsiteTarget,
        key: str,
        part_bytes: int,
        *,
        max_attempts: int = 4,
        backoff_s: float = 1.0,
        log: Callable[[str], None] = lambda _m: None,
    ):
        import queue
        import threading

        target.validate()
        self._client = client
        self.target = target
        self.key = key
        self.part_bytes = part_bytes
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._log = log
        args = {k: v for k, v in target.extra_args().items()}
        created = client.create_multipart_upload(Bucket=target.bucket, Key=key, **args)
        self.upload_id: str = created["UploadId"]
        self._pending: list[bytes] = []  # blocks of the part being filled (joined once: one copy)
        self._pending_bytes = 0
        self._next_part = 1
        self._bytes = 0
        self.failed: Optional[str] = None
        self._parts: "queue.Queue[Optional[tuple[int, bytes]]]" = queue.Queue(maxsize=1)
        self._worker = threading.Thread(target=self._upload_parts, name="s3-part-uploader", daemon=True)
        self._worker.start()

    def write(self, data: bytes) -> None:
        if self.failed:
            return
        self._bytes += len(data)
        offset = 0
        while offset < len(data) and not self.failed:
            take = min(self.part_bytes - self._pending_bytes, len(data) - offset)
            self._pending.append(data if take == len(data) else data[offset : offset + take])
            self._pending_bytes += take
            offset += take
            if self._pending_bytes == self.part_bytes:
                self._send_pending()

    def _send_pending(self) -> None:
        part = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        self._parts.put((self._next_part, part))
        self._next_part += 1

    def _upload_parts(self) -> None:
        while (item := self._parts.get()) is not None:
            if self.failed:
                continue
            number, body = item
            checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
            for attempt in range(1, self._max_attempts + 1):
                try:
                    self._client.upload_part(
                        Bucket=self.target.bucket, Key=self.key, UploadId=self.upload_id,
                        PartNumber=number, Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum,
                    )
                    break
                except (ClientError, BotoCoreError) as exc:
                    if attempt == self._max_attempts:
                        self.failed = f"part {number} failed after {attempt} attempts: {_explain(exc, self.target.bucket)}"
                        self._log(f"streaming offsite upload stopped ({self.failed}); the finished file will be uploaded instead")
                        break
                    time.sleep(self._backoff_s * 2 ** (attempt - 1))

    def finish(self) -> Optional[PendingUpload]:
        """Send the last part and wait for all parts; returns the pending upload, or None if streaming failed."""
        if not self.failed and (self._pending or self._next_part == 1):
            self._send_pending()
        self._parts.put(None)
        self._worker.join()
        if self.failed:
            self.abort()
            return None
        return PendingUpload(self.target.bucket, self.key, self.upload_id, self._next_part - 1, self.part_bytes, self._bytes)

    def abort(self) -> None:
        if self._worker.is_alive():
            self.failed = self.failed or "aborted"
            try:
                self._parts.put_nowait(None)
            except Exception:
                pass
            self._worker.join(30)
        abort_pending_upload(self._client, self.target.bucket, self.key, self.upload_id)


def abort_pending_upload(client: Any, bucket: str, key: str, upload_id: str) -> bool:
    """Abort an incomplete multipart upload; True if it existed. Never raises for an already-gone upload."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        return True
    except (ClientError, BotoCoreError):
        return False


def complete_pending_upload(
    client: Any, pending: PendingUpload, path: Path, sha256_hex: str
) -> tuple[int, str]:
    """Check every uploaded part against the local file, complete the upload, then verify the object.

    Returns (size, ChecksumSHA256) as S3 reports them; raises OffsiteError (after aborting) on a mismatch.
    """
    remote_parts = []
    paginator = client.get_paginator("list_parts")
    try:
        for page in paginator.paginate(Bucket=pending.bucket, Key=pending.key, UploadId=pending.upload_id):
            remote_parts.extend(page.get("Parts", []))
    except (ClientError, BotoCoreError) as exc:
        raise OffsiteError(f"the pending upload of s3://{pending.bucket}/{pending.key} is gone: {_explain(exc, pending.bucket)}") from None
    remote_parts.sort(key=lambda p: p["PartNumber"])
    local = []
    digests = []
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(pending.part_bytes), b""):
            digests.append(hashlib.sha256(block).digest())
            local.append((len(block), base64.b64encode(digests[-1]).decode()))
    if not local:
        digests.append(hashlib.sha256(b"").digest())
        local.append((0, base64.b64encode(digests[-1]).decode()))
    composite = f"{base64.b64encode(hashlib.sha256(b''.join(digests)).digest()).decode()}-{len(digests)}"
    problems = []
    if len(remote_parts) != len(local):
        problems.append(f"{len(remote_parts)} parts in S3, {len(local)} expected")
    for part, (size, checksum) in zip(remote_parts, local):
        if int(part["Size"]) != size or part.get("ChecksumSHA256", checksum) != checksum:
            problems.append(f"part {part['PartNumber']} differs from the local file")
    if problems:
        abort_pending_upload(client, pending.bucket, pending.key, pending.upload_id)
        raise OffsiteError(f"the streamed upload of {path.name} does not match the file on disk ({'; '.join(problems[:5])}); aborted it")
    client.complete_multipart_upload(
        Bucket=pending.bucket,
        Key=pending.key,
        UploadId=pending.upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": p["PartNumber"], "ETag": p["ETag"], "ChecksumSHA256": checksum}
                for p, (_size, checksum) in zip(remote_parts, local)
            ]
        },
    )
    try:
        return verify_remote_copy(client, pending.bucket, pending.key, path, sha256_hex, expected_checksum=composite)
    except OffsiteError as exc:
        # Some stores do not report per-part checksums, so a mismatch can surface only now: the object we
        # just completed is wrong and must not pass for a backup.
        client.delete_object(Bucket=pending.bucket, Key=pending.key)
        raise OffsiteError(f"{exc}; deleted the mismatching object") from None

"""The streamed offsite upload: a multipart upload fed while pg_dump runs, completed only after the checks.

An incomplete multipart upload is invisible in the bucket. :func:`complete_pending_upload` compares every
uploaded part with the finished file, completes the upload, stamps the object with its SHA-256 (a
server-side copy onto itself, because the hash is known only once the dump has ended and S3 cannot add
metadata to an upload already begun) and verifies it. Any failure on the way aborts the upload (or deletes
the object that has no checksum yet) at once: nothing is left for retention to find a day later.
:func:`abort_abandoned_uploads` finds the uploads of runs that died (SIGKILL, lost container) and aborts them.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from loyalty_ops.lib.backup.inventory import list_multipart_uploads
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup.offsite_status import part_checksums, verify_remote_copy, whole_object_checksum
from loyalty_ops.lib.backup.offsite_errors import (
    S3_ERRORS,
    SHA256_METADATA,
    OffsiteError,
    error_code,
    explain,
    s3_failure,
)

STREAM_PART_MIN_BYTES = 8 * 1024 * 1024
STREAM_PART_MAX_BYTES = 32 * 1024 * 1024  # bounds memory: at most two parts are held at once
MAX_PARTS = 10_000
COPY_OBJECT_MAX_BYTES = 5 * 1024**3  # CopyObject's limit; larger objects are copied part by part
# An upload under our prefix is abandoned when the backup it belongs to started this long ago (see
# abort_abandoned_uploads): far longer than any dump plus its checks takes, so a live run is never touched.
ABANDONED_AFTER_HOURS = 6.0


def streaming_part_bytes(expected_bytes: Optional[int]) -> Optional[int]:
    """Part size for a streamed upload, or None when the object could outgrow 10,000 bounded parts."""
    expected = expected_bytes or 0
    needed = -(-int(expected * 1.2) // (MAX_PARTS - 500))
    if needed > STREAM_PART_MAX_BYTES:
        return None
    mib = 1024 * 1024
    return max(STREAM_PART_MIN_BYTES, -(-needed // mib) * mib)


class PendingUploadGone(OffsiteError):
    """The multipart upload recorded by the backup no longer exists (completed or aborted earlier)."""


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

    A part that cannot be uploaded (after botocore's retries, the client's one retry policy) turns the
    streaming off: the upload is aborted and the offsite step uploads the finished file instead; it never
    fails the backup itself. Memory is bounded by two parts: the one being filled, and one being uploaded
    (the writer waits for that upload to end before it hands on the next part).
    """

    def __init__(self, client: Any, location: BackupLocation, key: str, part_bytes: int, *, log: Callable[[str], None] = lambda _m: None):
        if location.bucket is None:
            raise OffsiteError("no offsite copy is configured: set LOYALTY_S3_BUCKET (e.g. LOYALTY_S3_BUCKET=loyalty-backups)")
        self._client = client
        self.bucket: str = location.bucket
        self.key = key
        self.part_bytes = part_bytes
        self._log = log
        # No Metadata here: the SHA-256 is not known until the dump ends; complete_pending_upload adds it.
        created = client.create_multipart_upload(Bucket=self.bucket, Key=key, **location.upload_args())
        self.upload_id: str = created["UploadId"]
        self._pending: list[bytes] = []  # blocks of the part being filled (joined once: one copy)
        self._pending_bytes = 0
        self._next_part = 1
        self._bytes = 0
        self.failed: Optional[str] = None
        self._parts: "queue.Queue[Optional[tuple[int, bytes]]]" = queue.Queue()
        self._slot = threading.Semaphore(1)  # one part handed on at a time (queued or uploading)
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
        self._slot.acquire()  # before the join: the joined copy never coexists with a part still uploading
        part = b"".join(self._pending)
        self._pending, self._pending_bytes = [], 0
        self._parts.put((self._next_part, part))
        self._next_part += 1

    def _upload_parts(self) -> None:
        import base64
        import hashlib

        while (item := self._parts.get()) is not None:
            try:
                if self.failed:
                    continue
                number, body = item
                checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
                try:
                    self._client.upload_part(
                        Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                        PartNumber=number, Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum,
                    )
                except S3_ERRORS as exc:
                    self.failed = f"part {number} failed: {explain(exc, self.bucket)}"
                    self._log(f"streaming offsite upload stopped ({self.failed}); the finished file will be uploaded instead")
            finally:
                item = body = None  # noqa: F841  (the part is freed before the writer may hand on the next)
                self._slot.release()

    def finish(self) -> Optional[PendingUpload]:
        """Send the last part and wait for all parts; returns the pending upload, or None if streaming failed."""
        if not self.failed and (self._pending or self._next_part == 1):
            self._send_pending()
        self._parts.put(None)
        self._worker.join()
        if self.failed:
            self.abort()
            return None
        return PendingUpload(self.bucket, self.key, self.upload_id, self._next_part - 1, self.part_bytes, self._bytes)

    def abort(self) -> None:
        if self._worker.is_alive():
            self.failed = self.failed or "aborted"
            try:
                self._parts.put_nowait(None)
            except queue.Full:
                pass
            self._worker.join(30)
        abort_pending_upload(self._client, self.bucket, self.key, self.upload_id)


def abort_pending_upload(client: Any, bucket: str, key: str, upload_id: str) -> bool:
    """Abort an incomplete multipart upload; True if it existed. Never raises for an already-gone upload."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        return True
    except S3_ERRORS:
        return False


def _delete_quietly(client: Any, bucket: str, key: str) -> None:
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except S3_ERRORS:
        pass  # the object has no sha256 metadata: offsite_copy_status never counts it as complete


def complete_pending_upload(
    client: Any,
    pending: PendingUpload,
    path: Path,
    sha256_hex: str,
    *,
    location: Optional[BackupLocation] = None,
    copy_limit_bytes: int = COPY_OBJECT_MAX_BYTES,
) -> tuple[int, str]:
    """Check every uploaded part against the local file, complete the upload, stamp the object with its
    SHA-256 and verify it. Returns (size, ChecksumSHA256) as S3 reports them.

    Raises OffsiteError after aborting the upload (before completion) or deleting the object (after it).
    ``location`` gives the encryption and storage class for the stamped object (default: as uploaded).
    """
    bucket, key = pending.bucket, pending.key
    remote_parts = []
    try:
        for page in client.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=pending.upload_id):
            remote_parts.extend(page.get("Parts", []))
    except S3_ERRORS as exc:
        if error_code(exc) in ("NoSuchUpload", "404"):
            raise PendingUploadGone(f"the pending upload of s3://{bucket}/{key} is gone (completed or aborted earlier)") from None
        raise s3_failure("listing the uploaded parts of", bucket, key, exc) from None
    remote_parts.sort(key=lambda p: p["PartNumber"])
    local, composite = part_checksums(path, pending.part_bytes)
    problems = []
    if len(remote_parts) != len(local):
        problems.append(f"{len(remote_parts)} parts in S3, {len(local)} expected")
    for part, (size, checksum) in zip(remote_parts, local):
        if int(part["Size"]) != size or part.get("ChecksumSHA256", checksum) != checksum:
            problems.append(f"part {part['PartNumber']} differs from the local file")
    if problems:
        abort_pending_upload(client, bucket, key, pending.upload_id)
        raise OffsiteError(f"the streamed upload of {path.name} does not match the file on disk ({'; '.join(problems[:5])}); aborted it")
    try:
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=pending.upload_id,
            MultipartUpload={"Parts": [
                {"PartNumber": p["PartNumber"], "ETag": p["ETag"], "ChecksumSHA256": checksum}
                for p, (_size, checksum) in zip(remote_parts, local)
            ]},
        )
    except S3_ERRORS as exc:
        # Aborted now, not left for retention: an incomplete upload is billed storage nobody can see.
        # (If S3 completed it but the answer was lost, the abort finds nothing; the object then has no
        # sha256 metadata, is deleted below and never counts as an offsite copy.)
        abort_pending_upload(client, bucket, key, pending.upload_id)
        _delete_quietly(client, bucket, key)
        raise OffsiteError(f"{s3_failure('completing the streamed upload of', bucket, key, exc)}; aborted the upload") from None
    size = Path(path).stat().st_size
    try:
        stamped_whole = _stamp_sha256(client, bucket, key, size, sha256_hex, pending.part_bytes, local, location, copy_limit_bytes)
        expected = whole_object_checksum(sha256_hex) if stamped_whole else composite
        return verify_remote_copy(client, bucket, key, path, sha256_hex, expected_checksum=expected)
    except (OffsiteError, *S3_ERRORS) as exc:
        # The object we just completed is unstamped or wrong: it must not pass for a backup.
        _delete_quietly(client, bucket, key)
        reason = str(exc) if isinstance(exc, OffsiteError) else explain(exc, bucket)
        raise OffsiteError(f"{reason}; deleted the object s3://{bucket}/{key} (the local backup is intact)") from None


def _stamp_sha256(
    client: Any, bucket: str, key: str, size: int, sha256_hex: str, part_bytes: int,
    local_parts: list[tuple[int, str]], location: Optional[BackupLocation], copy_limit_bytes: int,
) -> bool:
    """Copy the object onto itself with ``x-amz-meta-sha256``. True when it was copied whole (then S3's
    ChecksumSHA256 is the file's SHA-256); False when part by part, along the original part boundaries
    (then S3's composite checksum is unchanged)."""
    if location is not None:
        extra = location.upload_args()
    else:
        head = client.head_object(Bucket=bucket, Key=key)
        extra = {"ChecksumAlgorithm": "SHA256"}
        for field in ("ServerSideEncryption", "SSEKMSKeyId", "StorageClass"):
            if head.get(field):
                extra[field] = head[field]
    metadata = {SHA256_METADATA: sha256_hex}
    source = {"Bucket": bucket, "Key": key}
    if size <= copy_limit_bytes:
        client.copy_object(Bucket=bucket, Key=key, CopySource=source, MetadataDirective="REPLACE", Metadata=metadata, **extra)
        return True
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata, **extra)["UploadId"]
    try:
        parts = []
        for number, (part_size, checksum) in enumerate(local_parts, 1):
            start = (number - 1) * part_bytes
            result = client.upload_part_copy(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, CopySource=source,
                CopySourceRange=f"bytes={start}-{start + part_size - 1}",
            )
            parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"], "ChecksumSHA256": checksum})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException:
        abort_pending_upload(client, bucket, key, upload_id)
        raise
    return False


@dataclass(frozen=True)
class AbandonedUpload:
    key: str
    upload_id: str
    age_hours: float


def abort_abandoned_uploads(
    client: Any,
    location: BackupLocation,
    database: str,
    *,
    now: Optional[datetime] = None,
    older_than_hours: float = ABANDONED_AFTER_HOURS,
) -> list[AbandonedUpload]:
    """Abort the incomplete multipart uploads that runs which no longer run left under the location's prefix.

    The rule, so that a concurrently running backup's upload is never touched: only uploads to a canonical
    backup key of *this* database (``PREFIX/YYYY/MM/DD/<database>_<stamp>.dump.*``) are considered, and
    one is abandoned only when the backup it belongs to started more than ``older_than_hours`` ago by
    BOTH clocks: the timestamp in its key (our clock, taken when the dump started) and S3's ``Initiated``
    (the store's clock, when the upload began). A live backup's dump and checks end long before that.
    Keys of other databases, other tools and odd names are left alone. Raises OffsiteError when the
    uploads cannot be listed.
    """
    now = now or datetime.now(timezone.utc)
    bucket = location.bucket or ""
    aborted = []
    try:
        uploads = list_multipart_uploads(client, location)
    except S3_ERRORS as exc:
        raise OffsiteError(f"listing incomplete uploads under {location.prefix_uri} failed: {explain(exc, bucket)}") from None
    for upload in uploads:
        name = location.parse_key(upload.key)
        if name is None or name.database != database:
            continue
        ages = [(now - name.taken_at).total_seconds() / 3600]
        if isinstance(upload.initiated, datetime):
            ages.append((now - upload.initiated.astimezone(timezone.utc)).total_seconds() / 3600)
        if min(ages) < older_than_hours:
            continue
        if abort_pending_upload(client, bucket, upload.key, upload.upload_id):
            aborted.append(AbandonedUpload(upload.key, upload.upload_id, round(ages[0], 1)))
    return aborted

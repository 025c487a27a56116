"""The offsite copy: upload a backup and its sidecars to S3, then verify what S3 holds.

Uses boto3's managed transfer (multipart above a threshold, so files over 5 GB work), SHA-256 checksums,
server-side encryption and a storage class. The object carries its own SHA-256 in user metadata
(``x-amz-meta-sha256``), so it is never without its checksum, whatever happens to the sidecars. After the
upload the object is HEADed and its size and checksum compared with values computed here from the local
file, because an S3-compatible endpoint is not trusted to have checked them (moto, for one, does not);
then object and sidecars are checked together (:func:`offsite_copy_status`). Only then is it verified.

One retry policy: botocore's (the S3 client's ``standard`` retry mode, per request, with backoff). A
failed multipart upload is aborted by the transfer manager. The streamed upload lives in
``offsite_stream``, the completeness check in ``offsite_status``; both are re-exported here.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from boto3.s3.transfer import TransferConfig

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup.offsite_status import (  # noqa: F401  (re-exported)
    OffsiteCopyStatus,
    offsite_copy_status,
    require_complete_copy,
    verify_remote_copy,
)
from loyalty_ops.lib.backup.offsite_stream import (  # noqa: F401  (re-exported)
    AbandonedUpload,
    PendingUpload,
    PendingUploadGone,
    StreamingUpload,
    abort_abandoned_uploads,
    abort_pending_upload,
    complete_pending_upload,
    streaming_part_bytes,
)
from loyalty_ops.lib.backup.offsite_errors import (  # noqa: F401  (re-exported)
    S3_ERRORS,
    SHA256_METADATA,
    OffsiteError,
    check_bucket,
    explain,
    s3_failure,
)
from loyalty_ops.lib.progress import ProgressMeter, ProgressSnapshot

MULTIPART_CHUNK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class UploadedObject:
    bucket: str
    key: str
    bytes: int
    checksum_sha256: str  # as S3 reports it (base64, "-N" suffix for multipart)
    sha256_hex: str
    verified: bool
    duration_s: float
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


def _bucket(location: BackupLocation) -> str:
    if location.bucket is None:
        raise OffsiteError("no offsite copy is configured: set LOYALTY_S3_BUCKET (e.g. LOYALTY_S3_BUCKET=loyalty-backups)")
    return location.bucket


def upload_sidecars(client: Any, location: BackupLocation, path: Path, key: str) -> tuple[str, ...]:
    """Put the cluster globals file (when the backup has one), ``FILE.sha256`` and ``FILE.manifest.json``
    next to the object (small: one PUT each, retried by botocore). Raises OffsiteError naming the sidecar when one cannot be stored or is missing locally."""
    path = Path(path)
    bucket = _bucket(location)
    keys = []
    pairs = list(zip(location.sidecar_names(path.name), location.sidecar_names(key)))
    globals_name, globals_key = location.globals_name(path.name), location.globals_name(key)
    if globals_name and globals_key and path.with_name(globals_name).exists():
        pairs.insert(0, (globals_name, globals_key))  # before the sidecars: a complete set ends with them
    for local_name, sidecar_key in pairs:
        local = path.with_name(local_name)
        if not local.exists():
            raise OffsiteError(
                f"{local.name} is missing next to the backup, so s3://{bucket}/{key} cannot be completed; "
                "the backup was not written in full: take a new one"
            )
        try:
            extra = dict(location.upload_args())
            body = local.read_bytes()
            if local_name == globals_name:
                extra["Metadata"] = {SHA256_METADATA: hashlib.sha256(body).hexdigest()}
            client.put_object(Bucket=bucket, Key=sidecar_key, Body=body, **extra)
        except S3_ERRORS as exc:
            raise OffsiteError(
                f"{s3_failure('uploading the sidecar', bucket, sidecar_key, exc)}. The object "
                f"s3://{bucket}/{key} carries its sha256 in its metadata but is NOT counted as offsite "
                "until both sidecars are there"
            ) from None
        keys.append(sidecar_key)
    return tuple(keys)


def upload_backup(
    client: Any,
    location: BackupLocation,
    path: Path,
    key: str,
    sha256_hex: str,
    *,
    on_progress: Optional[Callable[[ProgressSnapshot], None]] = None,
    progress_interval_s: float = 10.0,
    chunk_bytes: int = MULTIPART_CHUNK_BYTES,
    log: Callable[[str], None] = lambda _m: None,
) -> UploadedObject:
    """Upload ``path`` to ``key`` (``location.key_for`` its name) with its sha256 metadata, then its two
    sidecars, then verify all three. The location's upload settings were checked when it was made."""
    path = Path(path)
    bucket = _bucket(location)
    check_bucket(client, bucket)
    size = path.stat().st_size
    config = TransferConfig(multipart_threshold=chunk_bytes, multipart_chunksize=chunk_bytes, max_concurrency=2)
    extra = dict(location.upload_args())
    extra["Metadata"] = {SHA256_METADATA: sha256_hex}
    started = time.monotonic()
    meter = ProgressMeter("upload", on_progress, expected_bytes=size, interval_s=progress_interval_s)
    try:
        client.upload_file(str(path), bucket, key, ExtraArgs=extra, Callback=meter.add, Config=config)
    except S3_ERRORS as exc:  # S3UploadFailedError after botocore's retries; the transfer aborted its parts
        raise OffsiteError(f"{s3_failure(f'uploading {path.name} to', bucket, key, exc)}") from None
    meter.finish()
    _size, checksum = verify_remote_copy(
        client, bucket, key, path, sha256_hex, expected_checksum=expected_s3_checksum(path, chunk_bytes)
    )
    sidecar_keys = upload_sidecars(client, location, path, key)
    status = require_complete_copy(client, bucket, key, sha256_hex=sha256_hex, size=size)
    log(f"offsite copy complete: {status.uri} with {', '.join(k.rsplit('/', 1)[-1] for k in sidecar_keys)}")
    return UploadedObject(
        bucket=bucket,
        key=key,
        bytes=size,
        checksum_sha256=checksum,
        sha256_hex=sha256_hex,
        verified=status.complete,
        duration_s=time.monotonic() - started,
        sidecar_keys=sidecar_keys,
    )

"""The offsite copy (``offsite_backup_copy``): the verified backup in S3, streamed during the dump or
uploaded after the checks, then HEADed and compared with the local file."""

from pathlib import Path
from typing import Iterator

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field

from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, recent_backups
from loyalty_ops.defs.resources import OffsiteStorage
from loyalty_ops.lib.backup.naming import parse_backup_name
from loyalty_ops.lib.backup.offsite import (
    OffsiteError,
    PendingUpload,
    StreamingUpload,
    check_bucket,
    complete_pending_upload,
    sidecar_paths,
    streaming_part_bytes,
    upload_backup,
)
from loyalty_ops.lib.progress import human_bytes

OWNERS = ["team:platform"]


def start_streaming_upload(context, offsite: OffsiteStorage, name, expected_bytes: int):
    """Begin the offsite multipart upload alongside the dump, or say why the upload will happen later."""
    part_bytes = streaming_part_bytes(expected_bytes)
    if part_bytes is None:
        context.log.info("database too large for a bounded-memory streamed upload; uploading after the checks")
        return None
    target = offsite.target()
    client = offsite.client()
    try:
        check_bucket(client, target.bucket)
        return StreamingUpload(client, target, name.s3_key(target.prefix), part_bytes, log=context.log.warning)
    except (OffsiteError, ClientError, BotoCoreError) as exc:
        context.log.warning(f"offsite copy cannot start now ({exc}); the backup continues and the offsite step will retry")
        return None


class OffsiteConfig(dg.Config):
    """Launchpad options for the offsite copy."""

    progress_interval_seconds: float = Field(default=10.0, description="How often the upload reports progress.")
    max_attempts: int = Field(default=4, description="Upload attempts on transient S3 errors (with backoff).")


@dg.asset(
    deps=[BACKUP_ASSET_KEY],
    group_name="backups",
    kinds={"s3"},
    owners=OWNERS,
    output_required=False,
    tags={"loyalty_ops/criticality": "critical"},
)
def offsite_backup_copy(
    context: dg.AssetExecutionContext, config: OffsiteConfig, offsite: OffsiteStorage
) -> Iterator[dg.MaterializeResult]:
    """The newest verified backup copied to S3 at `PREFIX/YYYY/MM/DD/<file>` with its sidecars, using
    multipart upload, SHA-256 checksums, server-side encryption and the configured storage class. After
    the upload the object is HEADed and its size and checksum compared with the local file. With no
    bucket configured nothing is uploaded and nothing is reported as uploaded."""
    if not offsite.configured:
        context.log.warning(
            "No offsite copy is configured (LOYALTY_S3_BUCKET is unset): this backup exists only on this "
            "machine. Nothing was uploaded."
        )
        return
    backups = recent_backups(context.instance, limit=1)
    if not backups or not backups[0].path:
        raise dg.Failure("there is no backup to copy offsite yet: materialize database_backup first")
    latest = backups[0]
    if not latest.verified:
        failed = [name for name, ok in latest.checks.items() if ok is not True]
        raise dg.Failure(
            f"the newest backup {latest.metadata.get('filename')} did not pass its integrity checks "
            f"({', '.join(failed)}); refusing to copy it offsite"
        )
    path = Path(latest.path)
    name = parse_backup_name(path.name)
    if name is None or not path.exists():
        raise dg.Failure(f"backup file {path} is missing on this machine; it cannot be copied offsite")
    target = offsite.target()
    key = name.s3_key(target.prefix)
    meta = latest.metadata
    if meta.get("pending_upload_id") and meta.get("pending_upload_key") == key:
        yield _complete_streamed_upload(context, offsite, path, latest, target)
        return
    try:
        uploaded = upload_backup(
            offsite.client(),
            target,
            path,
            key,
            latest.metadata["sha256"],
            sidecars=sidecar_paths(path),
            on_progress=lambda snap: context.log.info(snap.message()),
            progress_interval_s=config.progress_interval_seconds,
            max_attempts=config.max_attempts,
            log=context.log.warning,
        )
    except OffsiteError as exc:
        raise dg.Failure(description=str(exc), metadata={"bucket": target.bucket, "key": key}) from None
    context.log.info(f"offsite copy verified: {uploaded.uri} ({human_bytes(uploaded.bytes)})")
    yield dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.url(uploaded.uri),
            "bucket": uploaded.bucket,
            "key": uploaded.key,
            "filename": path.name,
            "bytes": uploaded.bytes,
            "sha256": uploaded.sha256_hex,
            "s3_checksum_sha256": uploaded.checksum_sha256,
            "verified": uploaded.verified,
            "duration_s": round(uploaded.duration_s, 3),
            "throughput_mb_s": round(uploaded.bytes / 1e6 / max(uploaded.duration_s, 1e-6), 2),
            "attempts": uploaded.attempts,
            "sse": target.sse,
            "storage_class": target.storage_class,
            "sidecar_keys": dg.MetadataValue.json(list(uploaded.sidecar_keys)),
            "source_run_id": latest.run_id,
            "streamed": False,
        }
    )


def _complete_streamed_upload(context, offsite: OffsiteStorage, path, latest, target) -> dg.MaterializeResult:
    """The parts were uploaded during the dump: check them against the file, complete, verify, add sidecars."""
    import time

    meta = latest.metadata
    pending = PendingUpload(
        bucket=target.bucket,
        key=meta["pending_upload_key"],
        upload_id=meta["pending_upload_id"],
        parts=meta["pending_upload_parts"],
        part_bytes=meta["pending_upload_part_bytes"],
        bytes=meta["bytes"],
    )
    started = time.monotonic()
    client = offsite.client()
    try:
        size, checksum = complete_pending_upload(client, pending, path, meta["sha256"])
        sidecar_keys = []
        for sidecar in sidecar_paths(path):
            sidecar_key = pending.key + sidecar.name[len(path.name):]
            client.upload_file(str(sidecar), target.bucket, sidecar_key, ExtraArgs=target.extra_args())
            sidecar_keys.append(sidecar_key)
    except (OffsiteError, ClientError, BotoCoreError) as exc:
        raise dg.Failure(description=f"completing the streamed offsite copy failed: {exc}",
                         metadata={"bucket": target.bucket, "key": pending.key}) from None
    duration = time.monotonic() - started
    uri = f"s3://{target.bucket}/{pending.key}"
    context.log.info(f"offsite copy verified: {uri} ({human_bytes(size)}, {pending.parts} parts streamed during the dump)")
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.url(uri),
            "bucket": target.bucket,
            "key": pending.key,
            "filename": path.name,
            "bytes": size,
            "sha256": meta["sha256"],
            "s3_checksum_sha256": checksum,
            "verified": True,
            "duration_s": round(duration, 3),
            "parts": pending.parts,
            "attempts": 1,
            "sse": target.sse,
            "storage_class": target.storage_class,
            "sidecar_keys": dg.MetadataValue.json(sidecar_keys),
            "source_run_id": latest.run_id,
            "streamed": True,
        }
    )

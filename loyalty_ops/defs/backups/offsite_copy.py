"""The offsite copy (``offsite_backup_copy``): this run's verified backup in S3, streamed during the dump or
uploaded after the checks, with both sidecars, verified as a whole before it counts."""

import time
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, BackupRecord, recent_backups
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup.offsite import (
    S3_ERRORS,
    OffsiteError,
    PendingUpload,
    PendingUploadGone,
    StreamingUpload,
    abort_abandoned_uploads,
    check_bucket,
    complete_pending_upload,
    require_complete_copy,
    streaming_part_bytes,
    upload_backup,
    upload_sidecars,
)
from loyalty_ops.lib.backup.object_lock import ObjectLockError, require_object_lock
from loyalty_ops.lib.formatting import human_bytes

OWNERS = ["team:platform"]


def abort_abandoned(context, client, location: BackupLocation, database: str) -> list[str]:
    """Abort what earlier, dead runs left half-uploaded for this database; log each one. Never fails."""
    try:
        aborted = abort_abandoned_uploads(client, location, database)
    except OffsiteError as exc:
        context.log.warning(f"could not look for abandoned multipart uploads ({exc}); retention will still find them")
        return []
    for upload in aborted:
        context.log.warning(
            f"aborted an abandoned multipart upload of {location.uri_for(upload.key)} "
            f"(started {upload.age_hours} h ago by a run that no longer runs)"
        )
    return [upload.key for upload in aborted]


def start_streaming_upload(context, location: BackupLocation, client, name, expected_bytes: int):
    """Begin the offsite multipart upload alongside the dump, or say why the upload will happen later.
    First aborts the uploads that earlier runs of this database left behind when they were killed."""
    try:
        check_bucket(client, location.bucket)
    except OffsiteError as exc:
        context.log.warning(f"offsite copy cannot start now ({exc}); the backup continues and the offsite step will retry")
        return None
    abort_abandoned(context, client, location, name.database)
    part_bytes = streaming_part_bytes(expected_bytes)
    if part_bytes is None:
        context.log.info("database too large for a bounded-memory streamed upload; uploading after the checks")
        return None
    try:
        return StreamingUpload(client, location, location.key_for(name), part_bytes, log=context.log.warning)
    except (OffsiteError, *S3_ERRORS) as exc:
        context.log.warning(f"offsite copy cannot start now ({exc}); the backup continues and the offsite step will retry")
        return None


class OffsiteConfig(dg.Config):
    """Launchpad options for the offsite copy."""

    progress_interval_seconds: float = Field(default=10.0, description="How often the upload reports progress.")
    max_attempts: Optional[int] = Field(
        default=None,
        description="Retries per S3 request on transient errors (botocore's standard retry mode, with "
        "backoff). Empty uses the S3 resource's setting.",
    )


def _runs_of_this_copy(context: dg.AssetExecutionContext) -> list[str]:
    """This run, then the run it re-executes and that run's root (a retry of a failed offsite step)."""
    run = context.run
    ids = [context.run_id, run.parent_run_id, run.tags.get("dagster/parent_run_id"), run.root_run_id,
           run.tags.get("dagster/root_run_id")]
    return list(dict.fromkeys(i for i in ids if i))


def _took_a_backup(context: dg.AssetExecutionContext, run_id: str) -> bool:
    records = context.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return any(
        r.event_log_entry.asset_materialization is not None
        and r.event_log_entry.asset_materialization.asset_key == BACKUP_ASSET_KEY
        for r in records
    )


def backup_for_this_run(context: dg.AssetExecutionContext) -> Optional[BackupRecord]:
    """The backup this copy acts on: the one ``database_backup`` materialized in this same run (or in the
    run this one re-executes), never a concurrent run's newer one. Launched alone, the newest."""
    source_run = next((run_id for run_id in _runs_of_this_copy(context) if _took_a_backup(context, run_id)), None)
    if source_run is None:
        newest = recent_backups(context.instance, limit=1)
        return newest[0] if newest else None
    for record in recent_backups(context.instance, limit=50):
        if record.run_id == source_run:
            return record
    raise dg.Failure(
        f"the backup of run {source_run} is no longer among the 50 newest backups, so its checks cannot be "
        "read; launch offsite_backup_copy alone to copy the newest verified backup instead"
    )


@dg.asset(
    deps=[BACKUP_ASSET_KEY],
    group_name="backups",
    kinds={"s3"},
    owners=OWNERS,
    output_required=False,
    tags={"loyalty_ops/criticality": "critical"},
)
def offsite_backup_copy(
    context: dg.AssetExecutionContext, config: OffsiteConfig, backup_storage: BackupStorage, offsite: OffsiteStorage
) -> Iterator[dg.MaterializeResult]:
    """This run's verified backup (or, launched alone, the newest) copied to S3 at `PREFIX/YYYY/MM/DD/<file>`
    with its `.sha256` and `.manifest.json`, using multipart upload, SHA-256 checksums (also in the object's
    `x-amz-meta-sha256`), server-side encryption and the configured storage class. `verified: true` only when
    object and both sidecars are in S3 and agree with the local file. With no bucket nothing is uploaded."""
    if not offsite.configured:
        context.log.warning(
            "No offsite copy is configured (LOYALTY_S3_BUCKET is unset): this backup exists only on this "
            "machine. Nothing was uploaded."
        )
        return
    backup = backup_for_this_run(context)
    if backup is None or not backup.path:
        raise dg.Failure("there is no backup to copy offsite yet: materialize database_backup first")
    if not backup.verified:
        failed = [name for name, ok in backup.checks.items() if ok is not True]
        raise dg.Failure(
            f"the backup {backup.metadata.get('filename')} did not pass its integrity checks "
            f"({', '.join(failed)}); refusing to copy it offsite"
        )
    location = backup_storage.location(offsite)
    path = Path(backup.path)
    name = location.parse_name(path.name)
    if name is None or not path.exists():
        raise dg.Failure(f"backup file {path} is missing on this machine; it cannot be copied offsite")
    key = location.key_for(name)
    if location.object_lock_days:
        try:
            context.log.info(require_object_lock(offsite.client(), location.bucket, location.object_lock_days))
        except ObjectLockError as exc:
            raise dg.Failure(description=str(exc), metadata={"bucket": location.bucket, "verified": False}) from None
    client = (
        offsite.client() if config.max_attempts is None
        else offsite.s3.model_copy(update={"max_attempts": config.max_attempts}).get_client()
    )
    meta = backup.metadata
    started = time.monotonic()
    streamed = bool(meta.get("pending_upload_id") and meta.get("pending_upload_key") == key)
    try:
        if streamed:
            size, checksum, streamed = _complete_streamed_upload(context, client, path, backup, location)
        else:
            uploaded = upload_backup(
                client, location, path, key, meta["sha256"],
                on_progress=lambda snap: context.log.info(snap.message()),
                progress_interval_s=config.progress_interval_seconds,
                log=context.log.info,
            )
            size, checksum = uploaded.bytes, uploaded.checksum_sha256
        # The one gate before `verified: true`, whichever way the object went up.
        status = require_complete_copy(client, location.bucket, key, sha256_hex=meta["sha256"], size=path.stat().st_size)
    except OffsiteError as exc:
        raise dg.Failure(description=str(exc), metadata={"bucket": location.bucket, "key": key, "verified": False}) from None
    duration = time.monotonic() - started
    aborted = [] if streamed else abort_abandoned(context, client, location, name.database)
    context.log.info(f"offsite copy verified: {status.uri} ({human_bytes(size)}) with both sidecars")
    yield dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.url(status.uri),
            "bucket": location.bucket,
            "key": key,
            "filename": path.name,
            "bytes": size,
            "sha256": meta["sha256"],
            "s3_checksum_sha256": checksum,
            "verified": status.complete,
            "duration_s": round(duration, 3),
            "throughput_mb_s": round(size / 1e6 / max(duration, 1e-6), 2),
            "sse": location.sse,
            "object_lock_days": location.object_lock_days or 0,
            **({"object_lock_mode": location.object_lock_mode} if location.object_lock_days else {}),
            "storage_class": location.storage_class,
            "sidecar_keys": dg.MetadataValue.json(list(status.sidecar_keys)),
            "source_run_id": backup.run_id,
            "streamed": streamed,
            **({"parts": meta["pending_upload_parts"]} if streamed else {}),
            # Counted here only when this step looked; a streamed upload's backup step looked (and logged).
            **({} if streamed else {"abandoned_uploads_aborted": len(aborted)}),
        }
    )


def _complete_streamed_upload(
    context, client, path: Path, backup: BackupRecord, location: BackupLocation
) -> tuple[int, str, bool]:
    """The parts were uploaded during the dump: check them against the file, complete, stamp, add sidecars.
    When the pending upload is gone (an earlier attempt completed or aborted it), upload the file instead.
    Returns (size, ChecksumSHA256, whether the streamed parts were used)."""
    meta = backup.metadata
    pending = PendingUpload(
        bucket=location.bucket,
        key=meta["pending_upload_key"],
        upload_id=meta["pending_upload_id"],
        parts=meta["pending_upload_parts"],
        part_bytes=meta["pending_upload_part_bytes"],
        bytes=meta["bytes"],
    )
    try:
        size, checksum = complete_pending_upload(client, pending, path, meta["sha256"], location=location)
    except PendingUploadGone as exc:
        context.log.warning(f"{exc}; uploading the finished file instead")
        uploaded = upload_backup(client, location, path, pending.key, meta["sha256"], log=context.log.info)
        return uploaded.bytes, uploaded.checksum_sha256, False
    upload_sidecars(client, location, path, pending.key)
    context.log.info(f"streamed upload completed: {pending.parts} parts sent during the dump")
    return size, checksum, True

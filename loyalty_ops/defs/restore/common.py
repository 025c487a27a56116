"""Building a restore environment from the shared resources (used by the job and the drill)."""

from pathlib import Path
from typing import Optional


import dagster as dg

from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.lib.backup.encryption import EncryptionConfigError, load_identities
from loyalty_ops.lib.restore.run import RestoreEnvironment


def restore_environment(
    context,
    postgres: PostgresTarget,
    backup_storage: BackupStorage,
    offsite: OffsiteStorage,
    *,
    work_dir: Optional[str] = None,
    tmp_dir: Optional[str] = None,
    progress_interval_s: float = 10.0,
) -> RestoreEnvironment:
    spec = postgres.spec()
    runner = postgres.tools()
    location = backup_storage.location(offsite)
    return RestoreEnvironment(
        spec=spec,
        runner=runner,
        location=location,
        work_dir=Path(work_dir).expanduser().resolve() if work_dir else None,
        tmp_dir=Path(tmp_dir).expanduser().resolve() if tmp_dir else None,
        s3_client=offsite.client() if location.offsite_configured else None,
        log=context.log.info,
        warn=context.log.warning,
        on_progress=lambda snap: context.log.info(snap.message()),
        progress_interval_s=progress_interval_s,
        compression=backup_storage.compression,
        age_recipients=backup_storage.age_recipients if backup_storage.encrypts else None,
        identities=decryption_keys(backup_storage),
    )


def decryption_keys(backup_storage: BackupStorage) -> Optional[list]:
    """The age identities from LOYALTY_BACKUP_AGE_IDENTITY_FILE (None when it is not set: an encrypted backup is
    then refused with a message naming the variable). The file's path and content are never logged."""
    if not backup_storage.age_identity_file:
        return None
    try:
        return load_identities(backup_storage.age_identity_file)
    except EncryptionConfigError as exc:
        raise dg.Failure(str(exc)) from None


def restored_backup_summary(outcome, *, mode: str, jobs: int) -> dict:
    """The metadata every restore records first, whatever its mode: which backup, from where, its checksum,
    sizes and the measured RTO (``outcome`` is a RestoreOutcome or a NewServerOutcome)."""
    return {
        "mode": mode,
        "backup_filename": outcome.backup_filename,
        "backup_location": outcome.backup_location,
        "downloaded_from_s3": outcome.downloaded,
        "sha256": outcome.sha256,
        "archive_bytes": outcome.archive_bytes,
        "restored_bytes": outcome.restored_bytes,
        "rto_s": round(outcome.rto_s, 3),
        "pg_restore_jobs": jobs,
    }

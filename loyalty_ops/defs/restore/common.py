"""Building a restore environment from the shared resources (used by the job and the drill)."""

from pathlib import Path
from typing import Optional

import dagster as dg

from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.lib.pg.connection import ConnectionConfigError
from loyalty_ops.lib.restore.run import RestoreEnvironment
from loyalty_ops.lib.restore.source import S3Location


def restore_environment(
    context,
    postgres: PostgresTarget,
    backup_storage: BackupStorage,
    offsite: OffsiteStorage,
    *,
    work_dir: Optional[str] = None,
    progress_interval_s: float = 10.0,
) -> RestoreEnvironment:
    try:
        spec = postgres.spec()
        runner = postgres.tools()
    except ConnectionConfigError as exc:
        raise dg.Failure(str(exc)) from None
    s3 = None
    if offsite.configured:
        target = offsite.target()
        s3 = S3Location(offsite.client(), target.bucket, target.prefix)
    return RestoreEnvironment(
        spec=spec,
        runner=runner,
        backup_dir=backup_storage.path,
        work_dir=Path(work_dir).expanduser().resolve() if work_dir else None,
        s3=s3,
        log=context.log.info,
        warn=context.log.warning,
        on_progress=lambda snap: context.log.info(snap.message()),
        progress_interval_s=progress_interval_s,
        compression=backup_storage.compression,
    )

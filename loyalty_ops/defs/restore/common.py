"""Building a restore environment from the shared resources (used by the job and the drill)."""

from pathlib import Path
from typing import Optional


from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
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
    )

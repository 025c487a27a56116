"""``pitr_restore_job`` (launchpad): recover the cluster to a point in time, a restore point or the end of the
archive into a NEW data directory and a NEW PostgreSQL instance on a given port. Never over a running cluster:
replacing the live server is out of scope and refused. Every refusal comes before anything is written."""

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.pitr.health import require_enabled
from loyalty_ops.defs.pitr.resources import PitrResource
from loyalty_ops.defs.resources import OffsiteStorage, PostgresTarget
from loyalty_ops.lib.concurrency import job_tags
from loyalty_ops.lib.pitr.engine import EngineError
from loyalty_ops.lib.pitr.instance import RecoveryFailed, check_destination
from loyalty_ops.lib.pitr.location import PitrConfigError
from loyalty_ops.lib.pitr.options import format_instance_settings
from loyalty_ops.lib.pitr.recover import recover
from loyalty_ops.lib.pitr.target import RecoveryRefused, choose_base_backup, make_target


class PitrRestoreConfig(dg.Config):
    """Where to recover to and where the new instance goes."""

    target_time: Optional[str] = Field(default=None, description="ISO 8601 time to recover to; without a zone it is "
                                       "Africa/Harare (2026-12-01T14:30:00), or give one (2026-12-01T12:30:00Z).")
    target_name: Optional[str] = Field(default=None, description="A restore point (pg_create_restore_point) to recover to.")
    latest: bool = Field(default=False, description="Recover to the end of the archive.")
    target_dir: str = Field(description="A new or empty directory: the data directory goes to target_dir/data, the "
                            "server log to target_dir/server.log.")
    port: int = Field(description="A free port on 127.0.0.1 for the new instance.")
    backup_id: Optional[str] = Field(default=None, description="Start from this base backup; empty: the newest that fits.")
    keep_running: bool = Field(default=True, description="Leave the recovered instance running (stop it with pg_ctl -D "
                               "target_dir/data stop); false: stop it once verified.")
    server_settings: Optional[str] = Field(default=None, description="Server settings of the new instance over the "
                                           "source's configuration, NAME=VALUE,... (shared_buffers=4GB,huge_pages=off; "
                                           "shared_preload_libraries= sets one empty); not given: "
                                           "LOYALTY_PITR_INSTANCE_SETTINGS.")
    progress_interval_seconds: float = Field(default=10.0, description="How often the run log reports progress (<= 10 s).")


@dg.op(tags={"loyalty_ops/criticality": "critical"})
def pitr_restore(context: dg.OpExecutionContext, config: PitrRestoreConfig, pitr: PitrResource, postgres: PostgresTarget,
                 offsite: OffsiteStorage) -> dg.Output:
    """Fetches the right base backup, configures restore_command and the recovery target, starts the new instance,
    waits until recovery reaches the target (progress every 10 s) and it is promoted, and reports the recovered
    time, RTO and size."""
    require_enabled(pitr)
    base = Path(config.target_dir).expanduser().resolve()
    try:
        target = make_target(config.target_time, config.target_name, config.latest)
        check_destination(base, config.port)
        engine = pitr.engine(offsite, postgres)
        instance = pitr.recovering_instance(base, config.port, postgres, engine, pitr.recovery_settings(config.server_settings))
        backup = choose_base_backup(engine.list_backups(), target, datetime.now(timezone.utc), config.backup_id)
    except (RecoveryRefused, EngineError, PitrConfigError) as exc:
        raise dg.Failure(f"pitr_restore refused, nothing was changed: {exc}") from None
    context.log.info(f"recovering to {target.describe()} from base backup {backup.backup_id} into {instance.data_dir} "
                     f"on port {config.port}")
    interval = min(max(config.progress_interval_seconds, 0.5), 10.0)
    try:
        result = recover(engine, instance, backup, target, pitr.restore_command_for(engine, instance), postgres.spec(),
                         context.log.info, interval_s=interval)
    except (RecoveryFailed, EngineError) as exc:
        instance.stop()
        raise dg.Failure(f"pitr_restore failed: {exc}\nThe new directory {base} is left for inspection; remove it "
                         "before the next attempt.") from None
    if not config.keep_running:
        instance.stop()
    return dg.Output(None, metadata={
        "target": target.describe(),
        **result.metadata(),
        "base_backup_id": backup.backup_id,
        "rto_s": round(result.rto_s, 3),
        "replay_lsn": result.replay_lsn or "",
        "server_settings": format_instance_settings(instance.settings),
        "data_dir": str(instance.data_dir),
        "port": config.port,
        "running": config.keep_running,
        "connect": f"psql -h 127.0.0.1 -p {config.port} -U {postgres.spec().user or 'postgres'} {postgres.database_name}",
    })


def build_pitr_restore_job(database: str) -> dg.JobDefinition:
    @dg.job(name="pitr_restore_job", tags=job_tags(database, "warning", database_lock=False),
            description="Point-in-time recovery into a NEW data directory and a NEW instance on a given port (launchpad: "
            "target_time, target_name or latest; target_dir; port). Never over a running cluster; refusals change "
            "nothing. See docs/pitr.md.")
    def pitr_restore_job():
        pitr_restore()

    return pitr_restore_job

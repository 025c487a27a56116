"""``restore_job``: restore a backup into a new database, or replace a database, from the launchpad."""

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.settings import current_settings
from loyalty_ops.lib.concurrency import DATABASE_POOL, job_tags
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.defs.restore.common import restore_environment, restored_backup_summary
from loyalty_ops.defs.restore.history import backup_history
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.restore.errors import RestoreRefused, RestoreStepError
from loyalty_ops.lib.restore.plan import RestoreConfigError, plan_steps, validate_request
from loyalty_ops.lib.restore.run import restore_backup
from loyalty_ops.defs.restore.new_server import new_server_restore


class RestoreConfig(dg.Config):
    """What to restore, where, and how. The defaults restore the newest backup into a new database."""

    backup: str = Field(
        default="latest",
        description="'latest' (the newest backup that passed its integrity checks and drill, local or S3), a file "
        "name in the backup directory such as loyalty_20261127_020000.dump.gz, safety/<file> for the safety backup "
        "a replace took, or an S3 key such as backups/2026/11/27/loyalty_20261127_020000.dump.gz.",
    )
    target_database: str = Field(
        default="",
        description="Database to restore into. Empty in new_database mode: loyalty_restored_<YYYYMMDD_HHMMSS>.",
    )
    mode: str = Field(
        default="new_database",
        description="'new_database' (default): create target_database, refused if it exists. 'replace': take a "
        "safety backup of target_database, restore beside it, then swap it in (drops the old one). 'new_server': "
        "disaster recovery onto an empty server: create the backup's roles (with their passwords; existing roles "
        "are left as they are), then the database (target_database defaults to the source's name) with its "
        "owner, grants and settings. Works from S3 alone.",
    )
    confirm: str = Field(
        default="",
        description="Required for mode 'replace': type the target database's name exactly. Nothing is changed otherwise.",
    )
    jobs: int = Field(
        default=2,
        description="Parallel pg_restore jobs (pg_restore -j), 1-16. 1 streams the verified archive into pg_restore "
        "without a temporary decompressed copy (for a disk too small for one).",
    )
    no_owner: bool = Field(
        default=False, description="pg_restore --no-owner: objects belong to the restoring role (roles of the source missing)."
    )
    progress_interval_seconds: float = Field(default=10.0, description="How often the run log reports progress (<= 10 s).")


@dg.op(tags={"loyalty_ops/criticality": "critical"}, pool=DATABASE_POOL)
def restore_database(
    context: dg.OpExecutionContext,
    config: RestoreConfig,
    postgres: PostgresTarget,
    backup_storage: BackupStorage,
    offsite: OffsiteStorage,
    restore_settings: RestoreSettings,
) -> dict:
    """Find the backup ('latest': the newest that passed its checks and drill; a damaged local file falls back to
    its intact S3 copy), download it from S3 if needed, verify its SHA-256, take a safety backup before a
    replace, pg_restore -j N --exit-on-error, compare row counts with the manifest, and (replace) swap the
    restored database in. Any mistake in the config or the backup is refused before anything changes."""
    now = datetime.now(timezone.utc)
    target = config.target_database.strip()
    if not target and config.mode == "new_database":
        target = f"{postgres.database_name}_restored_{now:%Y%m%d_%H%M%S}"
    if not target and config.mode == "new_server":
        target = postgres.database_name
    try:
        request = validate_request(
            backup=config.backup,
            target_database=target,
            mode=config.mode,
            confirm=config.confirm or None,
            jobs=config.jobs,
            no_owner=config.no_owner,
        )
    except RestoreConfigError as exc:
        raise dg.Failure(description=f"refused: {exc}", metadata={"changed": False, "step": "config"}) from None
    interval = min(max(config.progress_interval_seconds, 0.5), 10.0)
    env = restore_environment(
        context, postgres, backup_storage, offsite, work_dir=restore_settings.work_dir, tmp_dir=restore_settings.tmp_dir,
        progress_interval_s=interval,
    )
    if request.backup.kind == "latest":
        env.history = backup_history(context.instance)
    context.log.info(
        f"restore plan ({request.mode}, target {request.target_database} on {env.spec.with_database(target).redacted()}):\n"
        + "\n".join(f"  {i}. {step}" for i, step in enumerate(plan_steps(request), 1))
    )
    try:
        if request.mode == "new_server":
            return new_server_restore(context, request, env, now)
        outcome = restore_backup(request, env, now=now)
    except RestoreRefused as exc:
        raise dg.Failure(
            description=f"refused at step '{exc.step}': {exc.detail}",
            metadata={"step": exc.step, "changed": False, "target_database": target},
        ) from None
    except RestoreStepError as exc:
        changed = "the target was not changed" if not exc.touched else "a partially restored database was dropped"
        raise dg.Failure(
            description=f"restore failed at step '{exc.step}': {exc.detail} ({changed})",
            metadata={"step": exc.step, "changed": exc.touched, "target_database": target},
        ) from None
    summary = {
        "target_database": outcome.request.target_database,
        **restored_backup_summary(outcome, mode=outcome.request.mode, jobs=outcome.request.jobs),
        "safety_backup": str(outcome.safety_backup) if outcome.safety_backup else "",
        "terminated_connections": outcome.terminated_connections,
        "rows_verified": outcome.comparison.rows_compared if outcome.comparison else 0,
        "materialized_views_verified": outcome.comparison.matviews_compared if outcome.comparison else 0,
        "database_locale": outcome.database_locale,
        "streamed": outcome.streamed,
    }
    metadata: dict = dict(summary)
    metadata["timings"] = dg.MetadataValue.json({k: round(v, 3) for k, v in outcome.timings.items()})
    metadata["skipped_backups"] = dg.MetadataValue.json(outcome.skipped_backups)
    if outcome.space is not None:
        metadata["space_check"] = dg.MetadataValue.md(outcome.space.table())
        metadata["space"] = dg.MetadataValue.json(outcome.space.as_metadata())
    metadata["how_chosen"] = dg.MetadataValue.md("\n".join(f"- {note}" for note in outcome.notes) or "- named in the config")
    if outcome.comparison is not None:
        metadata["verification"] = outcome.comparison.summary()
    context.add_output_metadata(metadata)
    context.log.info(
        f"restored {outcome.backup_filename} into {outcome.request.target_database} "
        f"({human_bytes(outcome.restored_bytes)}) in {outcome.rto_s:.1f} s"
        + (f"; safety backup {outcome.safety_backup}" if outcome.safety_backup else "")
    )
    return summary


@dg.job(
    tags=job_tags(current_settings().postgres.database_name, "critical"),
    description="Restore a backup from the launchpad: 'latest', a file name or an S3 key; into a new database "
    "(default) or replacing one (confirm must repeat its name; a safety backup is taken first).",
)
def restore_job():
    restore_database()

"""PITR domain definitions: archive health every 5 minutes, the weekly base backup (and PITR retention after it),
the point-in-time restore job, and the ``pitr`` resource. The PITR drill runs in the nightly backup job.
Schedules run only when LOYALTY_PITR_ENABLED is true (they show as stopped otherwise)."""

import dagster as dg

from loyalty_ops.defs.pitr.base_backup import base_backup
from loyalty_ops.defs.pitr.drill import pitr_drill, pitr_drill_recovered_to_the_mark
from loyalty_ops.defs.pitr.health import wal_archive_health, wal_archive_settings
from loyalty_ops.defs.pitr.resources import pitr_resource
from loyalty_ops.defs.pitr.restore import build_pitr_restore_job
from loyalty_ops.defs.pitr.retention import pitr_retention
from loyalty_ops.defs.settings import current_settings
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE
from loyalty_ops.lib.concurrency import job_tags

DEFAULT_BASE_BACKUP_CRON = "0 1 * * 0"

_settings = current_settings()
_database = _settings.postgres.database_name
_status = dg.DefaultScheduleStatus.RUNNING if _settings.pitr.enabled else dg.DefaultScheduleStatus.STOPPED

wal_archive_health_job = dg.define_asset_job(
    name="wal_archive_health_job",
    selection=dg.AssetSelection.assets(wal_archive_health),
    description="Check the WAL archive at both ends (server and bucket); its checks page on lag or failure.",
    tags=job_tags(_database, "critical", database_lock=False),
)

weekly_base_backup_job = dg.define_asset_job(
    name="weekly_base_backup_job",
    selection=dg.AssetSelection.assets(base_backup, pitr_retention),
    description="A physical base backup through barman-cloud (blocking checks), then PITR retention (plan first).",
    tags=job_tags(_database, "critical"),
)

wal_archive_health_schedule = dg.ScheduleDefinition(
    name="wal_archive_health_schedule", job=wal_archive_health_job, cron_schedule="*/5 * * * *",
    execution_timezone=PLATFORM_TIMEZONE, default_status=_status,
    description="Every 5 minutes: archive lag (the live RPO), failures, the bucket's newest WAL and gaps.",
)

weekly_base_backup_schedule = dg.ScheduleDefinition(
    name="weekly_base_backup_schedule", job=weekly_base_backup_job,
    cron_schedule=_settings.pitr.base_backup_cron or DEFAULT_BASE_BACKUP_CRON,
    execution_timezone=PLATFORM_TIMEZONE, default_status=_status,
    description="Base backup (default Sundays 01:00 Africa/Harare; LOYALTY_PITR_BASE_BACKUP_CRON).",
)

defs = dg.Definitions(
    assets=[wal_archive_settings, wal_archive_health, base_backup, pitr_retention, pitr_drill],
    asset_checks=[pitr_drill_recovered_to_the_mark],
    jobs=[wal_archive_health_job, weekly_base_backup_job, build_pitr_restore_job(_database)],
    schedules=[wal_archive_health_schedule, weekly_base_backup_schedule],
    resources={"pitr": pitr_resource(_settings)},
)

"""Backups domain definitions: the nightly backup job and its schedule (02:00 Africa/Harare), also
launched by hand from the launchpad."""

from __future__ import annotations

import dagster as dg

from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.settings import current_settings
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE
from loyalty_ops.lib.concurrency import DATABASE_LOCK_TAG, job_tags  # noqa: F401 (DATABASE_LOCK_TAG re-exported)

# Runs that lock the database for a dump, restore or maintenance carry this tag; the instance's run
# queue allows one such run per database at a time (see dagster.yaml).

nightly_backup_job = dg.define_asset_job(
    name="nightly_backup_job",
    selection=dg.AssetSelection.assets(database_backup, offsite_backup_copy, "restore_drill", "pitr_drill"),
    description="Dump the loyalty database, verify the file (blocking checks), copy it to S3 and prove it "
    "restores (restore drill into a scratch database), then the point-in-time recovery drill (when PITR is on). Scheduled nightly at 02:00 Africa/Harare; launch by "
    "hand for an ad-hoc backup.",
    tags=job_tags(current_settings().postgres.database_name, "critical"),
)

nightly_backup_schedule = dg.ScheduleDefinition(
    name="nightly_backup_schedule",
    job=nightly_backup_job,
    cron_schedule="0 2 * * *",
    execution_timezone=PLATFORM_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The guide's nightly backup cron entry: every day at 02:00 Africa/Harare.",
)

defs = dg.Definitions(
    assets=[database_backup, offsite_backup_copy],
    asset_checks=BACKUP_CHECKS,
    jobs=[nightly_backup_job],
    schedules=[nightly_backup_schedule],
)

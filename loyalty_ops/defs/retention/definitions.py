"""Retention domain: the daily retention job (plan, then cleanup) at 04:00 Africa/Harare, two hours
after the nightly backup, and the settings resource from LOYALTY_RETENTION_* variables."""

import dagster as dg

from loyalty_ops.defs.settings import current_settings
from loyalty_ops.lib.concurrency import job_tags
from loyalty_ops.defs.retention.assets import retention_cleanup, retention_plan
from loyalty_ops.defs.retention.settings import retention_settings
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE

# Serialised with backups and restores (same lock as the nightly backup): retention never judges the
# "newest backup" while one is still being written or checked.
retention_job = dg.define_asset_job(
    name="retention_job",
    selection=dg.AssetSelection.assets(retention_plan, retention_cleanup),
    description="Plan retention (readable in retention_plan's `plan` metadata), then carry it out. Launch with "
    "retention_cleanup's dry_run: true to see what would be deleted without deleting anything.",
    tags=job_tags(current_settings().postgres.database_name, "warning"),
)

retention_schedule = dg.ScheduleDefinition(
    name="retention_schedule",
    job=retention_job,
    cron_schedule="0 4 * * *",
    execution_timezone=PLATFORM_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 04:00 Africa/Harare, after the 02:00 nightly backup (the guide's find -mtime +30 -delete, made safe).",
)

defs = dg.Definitions(
    assets=[retention_plan, retention_cleanup],
    jobs=[retention_job],
    schedules=[retention_schedule],
    resources={"retention_settings": retention_settings(current_settings())},
)

"""Maintenance domain definitions: the weekly maintenance job, its Sunday 03:00 Africa/Harare schedule
(the guide's cron entry) and manual launches from the launchpad."""

import dagster as dg

from loyalty_ops.defs.settings import LoyaltySettings, current_settings
from loyalty_ops.lib.concurrency import job_tags
from loyalty_ops.defs.maintenance.assets import MAINTENANCE_ASSET_KEY, weekly_maintenance
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE

weekly_maintenance_job = dg.define_asset_job(
    name="weekly_maintenance_job",
    selection=dg.AssetSelection.assets(weekly_maintenance),
    description="VACUUM/ANALYZE and REINDEX the tables and indexes that need it, without blocking writes "
    "(lock_timeout, SKIP_LOCKED, REINDEX CONCURRENTLY). Scheduled Sundays 03:00 Africa/Harare; launch by hand "
    "with a list of tables/indexes, dry_run, or mode 'full' for the guide's VACUUM ANALYZE + REINDEX DATABASE.",
    tags=job_tags(current_settings().postgres.database_name, "warning"),
)


def scheduled_run_config(settings: LoyaltySettings) -> dict:
    """What the Sunday run does. LOYALTY_MAINTENANCE_MODE=full (with LOYALTY_MAINTENANCE_FULL_REINDEX=database
    or concurrently) makes it the guide's full maintenance; LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S tunes the lock
    bound. Unset: smart mode with the defaults."""
    config = settings.maintenance.model_dump(exclude_none=True)
    return {"ops": {MAINTENANCE_ASSET_KEY: {"config": config}}} if config else {}


weekly_maintenance_schedule = dg.ScheduleDefinition(
    name="weekly_maintenance_schedule",
    job=weekly_maintenance_job,
    cron_schedule="0 3 * * 0",
    execution_timezone=PLATFORM_TIMEZONE,
    run_config=scheduled_run_config(current_settings()),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The guide's weekly maintenance cron entry: Sundays at 03:00 Africa/Harare.",
)

defs = dg.Definitions(
    assets=[weekly_maintenance],
    jobs=[weekly_maintenance_job],
    schedules=[weekly_maintenance_schedule],
)

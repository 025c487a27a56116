"""Maintenance domain definitions: the weekly maintenance job, its Sunday 03:00 Africa/Harare schedule
(the guide's cron entry) and manual launches from the launchpad."""

import os
from typing import Mapping

import dagster as dg

from loyalty_ops.defs.environment import target_database_name
from loyalty_ops.lib.concurrency import job_tags
from loyalty_ops.defs.maintenance.assets import MAINTENANCE_ASSET_KEY, weekly_maintenance
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE

weekly_maintenance_job = dg.define_asset_job(
    name="weekly_maintenance_job",
    selection=dg.AssetSelection.assets(weekly_maintenance),
    description="VACUUM/ANALYZE and REINDEX the tables and indexes that need it, without blocking writes "
    "(lock_timeout, SKIP_LOCKED, REINDEX CONCURRENTLY). Scheduled Sundays 03:00 Africa/Harare; launch by hand "
    "with a list of tables/indexes, dry_run, or mode 'full' for the guide's VACUUM ANALYZE + REINDEX DATABASE.",
    tags=job_tags(target_database_name(), "warning"),
)


def scheduled_run_config(environ: Mapping[str, str] = os.environ) -> dict:
    """What the Sunday run does. LOYALTY_MAINTENANCE_MODE=full (with LOYALTY_MAINTENANCE_FULL_REINDEX=database
    or concurrently) makes it the guide's full maintenance; LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S tunes the lock
    bound. Unset: smart mode with the defaults."""
    config: dict = {}
    if environ.get("LOYALTY_MAINTENANCE_MODE"):
        config["mode"] = environ["LOYALTY_MAINTENANCE_MODE"]
    if environ.get("LOYALTY_MAINTENANCE_FULL_REINDEX"):
        config["full_reindex"] = environ["LOYALTY_MAINTENANCE_FULL_REINDEX"]
    raw = environ.get("LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S")
    if raw:
        # A bad value must not stop the whole code location loading: passed on as text, the scheduled run
        # is refused with Dagster's config error naming lock_timeout_s.
        try:
            config["lock_timeout_s"] = float(raw)
        except ValueError:
            config["lock_timeout_s"] = raw
    return {"ops": {MAINTENANCE_ASSET_KEY: {"config": config}}} if config else {}


weekly_maintenance_schedule = dg.ScheduleDefinition(
    name="weekly_maintenance_schedule",
    job=weekly_maintenance_job,
    cron_schedule="0 3 * * 0",
    execution_timezone=PLATFORM_TIMEZONE,
    run_config=scheduled_run_config(),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The guide's weekly maintenance cron entry: Sundays at 03:00 Africa/Harare.",
)

defs = dg.Definitions(
    assets=[weekly_maintenance],
    jobs=[weekly_maintenance_job],
    schedules=[weekly_maintenance_schedule],
)

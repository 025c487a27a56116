"""Reports domain definitions: database and application health every 15 minutes, bloat and size reports
daily at 05:30, the morning report at 07:00 (Africa/Harare). Jobs carry severity ``warning``: failing
checks (WARN/ERROR, thresholds in ``lib/reports/thresholds.py``) are what the alerting sensors page on."""

import dagster as dg

from loyalty_ops.defs.reports.assets import application_health, bloat_report, database_health, database_size_report
from loyalty_ops.defs.reports.morning import morning_report
from loyalty_ops.defs.reports.resources import application_endpoints
from loyalty_ops.defs.settings import current_settings
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE

SEVERITY_TAGS = {"loyalty_ops/severity": "warning"}

database_health_job = dg.define_asset_job(
    name="database_health_job",
    selection=dg.AssetSelection.assets(database_health, application_health),
    description="Database health (connections, long queries, xid age, replication, disk, memory) and "
    "application health (API /health and /ready, Redis). Scheduled every 15 minutes.",
    # A health check that hangs must not hold a worker for the instance-wide 6 h: run monitoring cancels
    # it after 10 minutes, and the failure pages.
    tags={**SEVERITY_TAGS, "dagster/max_runtime": "600"},
)

daily_reports_job = dg.define_asset_job(
    name="daily_reports_job",
    selection=dg.AssetSelection.assets(bloat_report, database_size_report),
    description="Bloat (estimate for every table and index, exact pgstattuple figures for the worst) and "
    "database/table sizes with growth. Scheduled daily at 05:30 Africa/Harare.",
    tags=SEVERITY_TAGS,
)

morning_report_job = dg.define_asset_job(
    name="morning_report_job",
    selection=dg.AssetSelection.assets(morning_report),
    description="The guide's morning checks in one markdown page, read from history. Daily at 07:00 Africa/Harare.",
    tags=SEVERITY_TAGS,
)

database_health_schedule = dg.ScheduleDefinition(
    name="database_health_schedule",
    job=database_health_job,
    cron_schedule="*/15 * * * *",
    execution_timezone=PLATFORM_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Database and application health every 15 minutes.",
)

daily_reports_schedule = dg.ScheduleDefinition(
    name="daily_reports_schedule",
    job=daily_reports_job,
    cron_schedule="30 5 * * *",
    execution_timezone=PLATFORM_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Bloat and size reports daily at 05:30 Africa/Harare (after the 02:00 backup and Sunday 03:00 maintenance).",
)

morning_report_schedule = dg.ScheduleDefinition(
    name="morning_report_schedule",
    job=morning_report_job,
    cron_schedule="0 7 * * *",
    execution_timezone=PLATFORM_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The morning report daily at 07:00 Africa/Harare.",
)

defs = dg.Definitions(
    assets=[bloat_report, database_size_report, database_health, application_health, morning_report],
    jobs=[database_health_job, daily_reports_job, morning_report_job],
    schedules=[database_health_schedule, daily_reports_schedule, morning_report_schedule],
    resources={"application_endpoints": application_endpoints(current_settings())},
)

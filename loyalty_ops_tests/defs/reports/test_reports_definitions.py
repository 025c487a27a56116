"""The reports domain's wiring: assets in group reports, checks by name, schedules in Harare time,
jobs tagged severity warning, the resource built from env vars (the Redis URL as an EnvVar)."""

from __future__ import annotations

import dagster as dg

from loyalty_ops.definitions import defs
from loyalty_ops.defs.reports.resources import application_endpoints
from loyalty_ops.defs.settings import load_settings
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE

REPORT_ASSETS = {"bloat_report", "database_size_report", "database_health", "application_health", "morning_report"}


def test_assets_checks_jobs_and_schedules():
    graph = defs.resolve_asset_graph()
    for name in REPORT_ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "reports" and node.owners == ["team:platform"]
    checks = {k.name for k in graph.asset_check_keys if k.asset_key.path[0] in REPORT_ASSETS}
    assert checks == {
        "database_reachable", "database_connections", "long_running_queries", "transaction_id_age", "replication_lag",
        "backup_volume_disk", "host_memory", "api_healthy", "api_latency", "redis_reachable", "redis_memory",
    }
    for job in ("database_health_job", "daily_reports_job", "morning_report_job"):
        assert defs.resolve_job_def(job).tags["loyalty_ops/severity"] == "warning"
    crons = {}
    for name in ("database_health_schedule", "daily_reports_schedule", "morning_report_schedule"):
        schedule = defs.resolve_schedule_def(name)
        assert schedule.execution_timezone == PLATFORM_TIMEZONE
        crons[name] = schedule.cron_schedule
    assert crons["database_health_schedule"] == "*/15 * * * *"


def test_application_endpoints_from_environment():
    empty = application_endpoints(load_settings({}))
    assert empty.api_url is None and empty.redis_url is None and empty.timeout_s == 5.0
    configured = application_endpoints(load_settings(
        {"LOYALTY_API_URL": "http://localhost:8080", "LOYALTY_REDIS_URL": "redis://:pw@cache:6379/0", "LOYALTY_HEALTH_TIMEOUT_S": "3"}
    ))
    assert configured.api_url == "http://localhost:8080" and configured.timeout_s == 3.0
    assert isinstance(configured.redis_url, dg.EnvVar)  # the password never lands in run config

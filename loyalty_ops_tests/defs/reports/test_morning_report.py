"""morning_report reads history: a real verified backup with its offsite copy, health checks, bloat,
sizes; maintenance that never ran, then did; container_health when it exists."""

from __future__ import annotations

import dagster as dg

from loyalty_ops.definitions import defs
from loyalty_ops.defs.reports.assets import application_health, bloat_report, database_health, database_size_report
from loyalty_ops.defs.reports.morning import morning_report
from loyalty_ops.defs.reports.resources import ApplicationEndpoints
from loyalty_ops_tests.defs.reports.conftest import unreachable_url
from loyalty_ops_tests.helpers import materialization_metadata


def run_morning_report(resources, instance) -> dict:
    result = defs.resolve_job_def("morning_report_job").execute_in_process(resources=resources, instance=instance)
    return materialization_metadata(result, "morning_report")


def test_morning_report_with_no_history_says_what_never_ran(dagster_instance, pg_cluster, tmp_path):
    from loyalty_ops.defs.resources import BackupStorage
    from loyalty_ops_tests.conftest import postgres_target

    meta = run_morning_report(
        {"postgres": postgres_target(pg_cluster, "loyalty"), "backup_storage": BackupStorage(backup_dir=str(tmp_path))},
        dagster_instance,
    )
    report = meta["report"]
    assert meta["status"] == "error" and meta["backup_verified"] is False and meta["maintenance_ran"] is False
    assert "No backup has ever been taken" in report
    assert "Weekly maintenance **never ran**" in report
    assert "`database_health` has never run" in report
    assert "`bloat_report` has never run" in report
    assert "Backup volume" in report and "Containers" not in report


def test_morning_report_puts_the_morning_checks_in_one_place(ops_resources, dagster_instance):
    backup = defs.resolve_job_def("nightly_backup_job").execute_in_process(resources=ops_resources, instance=dagster_instance)
    assert backup.success
    backup_meta = materialization_metadata(backup, "database_backup")
    resources = {**ops_resources, "application_endpoints": ApplicationEndpoints(api_url=unreachable_url(), timeout_s=1.0)}
    # Health and reports in one run (morning_report runs last: it depends on them).
    result = dg.materialize(
        [database_health, application_health, bloat_report, database_size_report, morning_report],
        resources=resources, instance=dagster_instance,
    )
    assert result.success
    meta = materialization_metadata(result, "morning_report")
    report = meta["report"]
    assert backup_meta["filename"] in report and "verified (all integrity checks passed)" in report
    assert "offsite copy verified" in report
    assert meta["backup_verified"] is True and meta["backup_offsite_verified"] is True
    assert 0 <= meta["backup_age_h"] < 1
    assert "Weekly maintenance **never ran**" in report
    assert "application_health | api_healthy | ERROR" in report  # the unreachable API
    assert meta["status"] == "error" and "application_health.api_healthy" in meta["failing_check_names"]
    assert "database_health | database_reachable | pass" in report
    assert "## 4. Most bloated tables" in report and "public.events" in report
    assert "## 5. Disk" in report and isinstance(meta["disk_percent"], float)
    assert "Database size" in report

    # Maintenance and container health by other domains appear once they have run.
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization(
        "weekly_maintenance",
        metadata={"mode": "vacuum_analyze", "tables_vacuumed": 5, "indexes_reindexed": 0, "skipped": 0,
                  "reclaimed_bytes": 4096, "duration_s": 1.5},
    ))
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("container_health", metadata={"containers": 4, "unhealthy": 0}))
    meta = run_morning_report(resources, dagster_instance)
    report = meta["report"]
    assert meta["maintenance_ran"] is True
    assert "mode vacuum_analyze, tables_vacuumed 5" in report and "reclaimed_bytes 4.0 KB" in report
    assert "## 6. Containers" in report and "containers 4" in report

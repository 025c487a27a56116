"""The code location loads, validates, and reads its configuration from the environment as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

from loyalty_ops.defs.settings import load_settings
from loyalty_ops.defs.shared_resources import shared_resources

REPO = Path(__file__).resolve().parents[2]


def test_dagster_definitions_validate_passes(tmp_path):
    # Run outside the repo: the CLI would otherwise load the production dagster.yaml from the cwd.
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m", "loyalty_ops.definitions"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_every_schedule_has_the_platform_timezone_and_every_asset_an_owner():
    from loyalty_ops.definitions import defs

    repo = defs.get_repository_def()
    for schedule in repo.schedule_defs:
        assert schedule.execution_timezone == "Africa/Harare", schedule.name
    for key, spec in ((s.key, s) for s in defs.resolve_all_asset_specs()):
        assert spec.owners, f"{key} has no owner"
        assert spec.group_name and spec.group_name != "default", f"{key} has no group"
        assert spec.description, f"{key} has no description"


def test_nightly_backup_schedule_is_2am_harare():
    from loyalty_ops.definitions import defs

    schedule = defs.resolve_schedule_def("nightly_backup_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.job_name == "nightly_backup_job"


def test_environment_maps_to_resources_with_secrets_as_env_vars(monkeypatch):
    env = {
        "PGHOST": "db.internal",
        "PGPORT": "6432",
        "PGUSER": "ops",
        "PGPASSWORD": "hunter2-not-shown",
        "LOYALTY_BACKUP_DIR": "/var/backups/loyalty",
        "LOYALTY_COMPRESSION": "zstd",
        "LOYALTY_S3_BUCKET": "loyalty-offsite",
        "LOYALTY_S3_PREFIX": "prod/",
        "LOYALTY_S3_SSE": "aws:kms",
        "LOYALTY_S3_KMS_KEY_ID": "alias/loyalty",
        "LOYALTY_S3_STORAGE_CLASS": "STANDARD_IA",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-not-shown",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    resources = shared_resources(load_settings(env))
    postgres = resources["postgres"]
    # Unresolved: the secret is an EnvVar reference, so the UI and run config show its name only.
    assert isinstance(postgres.password, dg.EnvVar) and postgres.password.env_var_name == "PGPASSWORD"
    assert "hunter2" not in repr(resources)
    with dg.build_resources({"postgres": postgres}) as built:
        spec = built.postgres.spec()
        assert (spec.host, spec.port, spec.user, spec.dbname, spec.password) == (
            "db.internal", 6432, "ops", "loyalty", "hunter2-not-shown"
        )
    offsite = resources["offsite"]
    assert (offsite.bucket, offsite.prefix, offsite.sse, offsite.kms_key_id, offsite.storage_class) == (
        "loyalty-offsite", "prod/", "aws:kms", "alias/loyalty", "STANDARD_IA"
    )
    assert resources["backup_storage"].compression == "zstd"


def test_no_bucket_means_no_offsite_copy_and_says_so(ops_resources, dagster_instance, s3_server):
    from loyalty_ops.definitions import defs
    from loyalty_ops.defs.resources import OffsiteStorage
    from loyalty_ops_tests.conftest import s3_resource

    resources = {**ops_resources, "offsite": OffsiteStorage(s3=s3_resource(s3_server))}
    result = defs.resolve_job_def("nightly_backup_job").execute_in_process(resources=resources, instance=dagster_instance)
    assert result.success
    keys = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert keys >= {"database_backup"} and "offsite_backup_copy" not in keys
    warnings = [r.user_message for r in dagster_instance.all_logs(result.run_id) if "No offsite copy is configured" in r.user_message]
    assert warnings


def test_every_job_and_sensor_is_described_and_heavy_jobs_take_the_database_lock():
    from loyalty_ops.definitions import defs
    from loyalty_ops.lib.concurrency import DATABASE_LOCK_TAG, SEVERITY_TAG

    repo = defs.get_repository_def()
    for job in repo.get_all_jobs():
        if job.name.startswith("__"):
            continue
        assert job.description, f"job {job.name} has no description"
        assert job.tags.get(SEVERITY_TAG) in ("critical", "warning"), job.name
    for sensor in repo.sensor_defs:
        assert sensor.description, f"sensor {sensor.name} has no description"
    for name in ("nightly_backup_job", "restore_job", "weekly_maintenance_job", "retention_job"):
        assert defs.resolve_job_def(name).tags[DATABASE_LOCK_TAG] == "loyalty"

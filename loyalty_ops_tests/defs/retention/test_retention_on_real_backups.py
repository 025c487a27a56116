"""Retention on backups taken by the real nightly job (real cluster, pg_dump, moto S3): a backup damaged
on disk after its checks, and stray names that are not backups."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import dagster as dg
import pytest

from loyalty_ops.definitions import defs
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.defs.retention.settings import RetentionSettings
from loyalty_ops_tests.helpers import materialization_metadata

STRAY = "loyalty_20251301_000000.dump.gz"  # month 13: not a timestamp, so not a backup
STRAY_KEY = f"backups/2025/13/01/{STRAY}"
ONLY_THE_NEWEST = {"ops": {"retention_plan": {"config": {"min_keep": 1, "keep_days": 0}}}}


def _keys(client, bucket) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", ())}


@pytest.fixture
def two_backups(ops_resources, dagster_instance, s3_client, s3_bucket):
    """(older, newer) backup paths: two runs of nightly_backup_job (drills off), each verified and offsite."""
    resources = {**ops_resources, "restore_settings": RestoreSettings(drill_every_n_backups="0")}
    job = defs.resolve_job_def("nightly_backup_job")
    paths = []
    for _ in range(2):
        if paths:
            time.sleep(max(0.0, 1.05 - (time.time() % 1)))  # names have a one-second resolution
        result = job.execute_in_process(resources=resources, instance=dagster_instance, raise_on_error=True)
        assert materialization_metadata(result, "offsite_backup_copy")["verified"] is True
        paths.append(Path(materialization_metadata(result, "database_backup")["path"]))
    assert paths[0].name != paths[1].name
    return paths[0], paths[1]


def run_retention(ops_resources, instance, run_config=ONLY_THE_NEWEST):
    resources = {**ops_resources, "retention_settings": RetentionSettings()}
    return defs.resolve_job_def("retention_job").execute_in_process(
        resources=resources, instance=instance, raise_on_error=False, run_config=run_config
    )


def _failure(result) -> str:
    event = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    return event.step_failure_data.error.message


def test_a_backup_damaged_on_disk_after_its_checks_blocks_retention(
    two_backups, ops_resources, dagster_instance, backup_dir, s3_client, s3_bucket
):
    older, newer = two_backups
    intact = newer.read_bytes()
    good_sha = hashlib.sha256(intact).hexdigest()
    flipped = bytearray(intact)
    flipped[len(flipped) // 2] ^= 0xFF
    truncated = intact[: len(intact) // 2]

    for damaged in (bytes(flipped), truncated):
        newer.write_bytes(damaged)
        local_before, keys_before = set(p.name for p in backup_dir.iterdir()), _keys(s3_client, s3_bucket)
        result = run_retention(ops_resources, dagster_instance)
        assert not result.success  # the run-failure sensor pages on-call
        plan = materialization_metadata(result, "retention_plan")
        assert plan["blocked"] is True and plan["reverify_failed"] >= 1
        reason = plan["blocked_reason"]
        assert newer.name in reason and "re-verification failed" in reason
        assert f"expected sha256 {good_sha}" in reason and f"found {hashlib.sha256(damaged).hexdigest()}" in reason
        assert f"{len(damaged):,} bytes on disk" in reason
        assert "MISMATCH" in plan["plan"] and newer.name in plan["plan"]
        assert "nothing was deleted" in _failure(result)
        assert set(p.name for p in backup_dir.iterdir()) == local_before and _keys(s3_client, s3_bucket) == keys_before
        assert older.exists()

    # With the intact bytes back, the same run deletes the older backup: it was the damage that blocked.
    newer.write_bytes(intact)
    result = run_retention(ops_resources, dagster_instance)
    assert result.success, _failure(result)
    assert not older.exists() and newer.exists()
    assert not any(older.name in k for k in _keys(s3_client, s3_bucket))
    assert materialization_metadata(result, "retention_plan")["reverify_failed"] == 0


def test_a_stray_month_13_file_and_key_are_left_alone_by_retention_and_the_morning_report(
    two_backups, ops_resources, dagster_instance, backup_dir, s3_client, s3_bucket
):
    older, newer = two_backups
    (backup_dir / STRAY).write_bytes(b"not a backup")
    s3_client.put_object(Bucket=s3_bucket, Key=STRAY_KEY, Body=b"not a backup")

    result = run_retention(ops_resources, dagster_instance)
    assert result.success, _failure(result)
    plan = materialization_metadata(result, "retention_plan")
    assert plan["left_alone"] == {"local": [f"{STRAY} (not a backup name)"], "s3": [f"{STRAY_KEY} (not a backup name)"]}
    assert f"local `{STRAY} (not a backup name)`" in plan["plan"] and f"s3 `{STRAY_KEY}" in plan["plan"]
    assert (backup_dir / STRAY).exists() and STRAY_KEY in _keys(s3_client, s3_bucket)
    assert not older.exists() and newer.exists()  # retention did its work around the stray names

    report_run = defs.resolve_job_def("morning_report_job").execute_in_process(
        resources=ops_resources, instance=dagster_instance, raise_on_error=False
    )
    assert report_run.success
    report = materialization_metadata(report_run, "morning_report")
    assert report["left_alone"] == 2
    assert f"local `{STRAY}` (not a backup name)" in report["report"] and f"s3 `{STRAY_KEY}" in report["report"]
    assert newer.name in report["report"]  # the last backup is still reported as such

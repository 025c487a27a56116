"""The retention job end to end: real files in a temp directory, real objects on the moto S3 server,
backup history in a real Dagster instance."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import dagster as dg

from loyalty_ops.definitions import defs
from loyalty_ops.lib.backup.naming import backup_name
from loyalty_ops_tests.defs.retention.conftest import DB, PREFIX, record_drill, retention_resources
from loyalty_ops_tests.helpers import materialization_metadata


def run_retention(world, s3_server, *, dry_run=None, log_dir=None, plan_config=None, **settings):
    job = defs.resolve_job_def("retention_job")
    run_config = {"ops": {}}
    if dry_run is not None:
        run_config["ops"]["retention_cleanup"] = {"config": {"dry_run": dry_run}}
    if plan_config:
        run_config["ops"]["retention_plan"] = {"config": plan_config}
    return job.execute_in_process(
        resources=retention_resources(world, s3_server, log_dir=log_dir, **settings),
        instance=world.instance,
        raise_on_error=False,
        run_config=run_config,
    )


ODD_LOCAL = [
    "notes.txt",
    "loyalty_20200101_000000.dump.gz.bak",
    ".loyalty_20200101_000000.dump.gz.partial-4242",
    "other_20200101_000000.dump.gz",
    "loyalty_archive_20200101_000000.dump.gz",
    "loyalty_20201301_000000.dump.gz",
    "loyalty_20200101_000000.sql",
]


def _odd_files(world):
    old = time.time() - 400 * 86400
    for name in ODD_LOCAL:
        path = world.backup_dir / name
        path.write_bytes(b"not ours")
        os.utime(path, (old, old))
    (world.backup_dir / "subdir").mkdir()
    (world.backup_dir / "subdir" / "loyalty_20200101_000000.dump.gz").write_bytes(b"nested")
    old_name = backup_name(DB, world.now - timedelta(days=300))
    odd_keys = [
        f"{PREFIX}{old_name.filename}",  # flat layout
        f"{PREFIX}2020/01/01/{old_name.filename}",  # date path does not match the name
        f"other-prefix/{old_name.s3_key('')}",
        backup_name("other", world.now - timedelta(days=300)).s3_key(PREFIX),
        f"{PREFIX}readme.txt",
    ]
    for key in odd_keys:
        world.client.put_object(Bucket=world.bucket, Key=key, Body=b"not ours")
    return odd_keys


def test_dry_run_then_cleanup_keeps_floor_and_recent_and_leaves_odd_files_alone(world, s3_server, tmp_path):
    for d in range(0, 11):
        world.add(d)
    world.record(range(0, 11))
    odd_keys = _odd_files(world)
    log_dir = tmp_path / "logs"
    (log_dir / "nested").mkdir(parents=True)
    old = time.time() - 45 * 86400
    for rel in ("backup.log", "nested/db-maintenance-1.log", "keep.txt"):
        (log_dir / rel).write_text("x")
        os.utime(log_dir / rel, (old, old))
    (log_dir / "fresh.log").write_text("x")
    stale = world.client.create_multipart_upload(Bucket=world.bucket, Key=world.names[0].s3_key(PREFIX))["UploadId"]

    local_before, keys_before = world.local_names(), world.keys()
    result = run_retention(world, s3_server, dry_run=True, log_dir=log_dir, multipart_max_age_hours=0, keep_days=7)
    assert result.success
    plan_meta = materialization_metadata(result, "retention_plan")
    assert plan_meta["blocked"] is False
    assert plan_meta["local_delete"] == 4 * 3 and plan_meta["s3_delete"] == 4 * 3
    assert plan_meta["logs_delete"] == 2 and plan_meta["multipart_abort"] == 1
    assert plan_meta["bytes_to_free"] > 0 and isinstance(plan_meta["planning_s"], float)
    assert "# Retention plan for `loyalty`" in plan_meta["plan"] and "younger than 7 days" in plan_meta["plan"]
    cleanup_meta = materialization_metadata(result, "retention_cleanup")
    assert cleanup_meta["dry_run"] is True and cleanup_meta["deleted_local_backups"] == 4
    assert world.local_names() == local_before and world.keys() == keys_before

    result = run_retention(world, s3_server, log_dir=log_dir, multipart_max_age_hours=0, keep_days=7)
    assert result.success
    meta = materialization_metadata(result, "retention_cleanup")
    assert meta["deleted_local_backups"] == 4 and meta["deleted_s3_objects"] == 12 and meta["replanned"] is False
    assert meta["aborted_multipart_uploads"] == 1 and meta["deleted_logs"] == 2 and meta["errors"] == 0
    local_after, keys_after = world.local_names(), world.keys()
    for d in range(0, 11):
        name = world.names[d]
        assert (name.filename in local_after) == (d < 7), d
        assert (name.filename + ".sha256" in local_after) == (d < 7), d
        assert (name.s3_key(PREFIX) in keys_after) == (d < 7), d
    for odd in ODD_LOCAL:
        assert odd in local_after
    assert (world.backup_dir / "subdir" / "loyalty_20200101_000000.dump.gz").exists()
    assert set(odd_keys) <= keys_after
    assert sorted(p.relative_to(log_dir).as_posix() for p in log_dir.rglob("*") if p.is_file()) == ["fresh.log", "keep.txt"]
    uploads = world.client.list_multipart_uploads(Bucket=world.bucket).get("Uploads", [])
    assert stale not in [u["UploadId"] for u in uploads]


def test_a_month_of_failed_backups_deletes_nothing_and_fails(world, s3_server):
    for d in range(0, 40):
        world.add(d)
    world.record(range(0, 40), failed=range(0, 31))  # every backup of the last month failed its checks
    local_before, keys_before = world.local_names(), world.keys()
    result = run_retention(world, s3_server)
    assert not result.success
    plan_meta = materialization_metadata(result, "retention_plan")
    assert plan_meta["blocked"] is True and "has not passed its integrity checks" in plan_meta["blocked_reason"]
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "nothing was deleted" in failure.step_failure_data.error.message
    assert world.local_names() == local_before and world.keys() == keys_before


def test_month_without_any_backup_deletes_nothing_and_fails(world, s3_server):
    for d in range(31, 40):
        world.add(d, offsite=False)
    world.record(range(31, 40))
    local_before = world.local_names()
    result = run_retention(world, s3_server)
    assert not result.success
    assert "backups seem to be failing" in materialization_metadata(result, "retention_plan")["blocked_reason"]
    assert world.local_names() == local_before


def test_newest_backup_without_a_passed_drill_blocks_once_drills_exist(world, s3_server):
    for d in range(0, 9):
        world.add(d)
    world.record(range(0, 9))
    record_drill(world.instance, world.names[1].filename, True)
    record_drill(world.instance, world.names[0].filename, False)
    result = run_retention(world, s3_server, keep_days=7)
    assert not result.success
    assert "restore drill" in materialization_metadata(result, "retention_plan")["blocked_reason"]
    assert world.names[8].filename in world.local_names()
    record_drill(world.instance, world.names[0].filename, True)
    assert run_retention(world, s3_server, keep_days=7).success
    assert world.names[8].filename not in world.local_names()


def test_local_backup_without_confirmed_offsite_copy_is_kept(world, s3_server):
    for d in range(0, 10):
        world.add(d, offsite=d != 8)
    world.record(range(0, 10))
    result = run_retention(world, s3_server, keep_days=7)
    assert result.success
    local = world.local_names()
    assert world.names[8].filename in local and world.names[8].filename + ".sha256" in local
    assert world.names[7].filename not in local and world.names[9].filename not in local
    assert "no confirmed offsite copy" in materialization_metadata(result, "retention_plan")["plan"]


def test_invalid_policy_override_fails_before_touching_anything(world, s3_server):
    for d in range(0, 35, 5):
        world.add(d, offsite=False)
    world.record(range(0, 35, 5))
    before = world.local_names()
    result = run_retention(world, s3_server, plan_config={"min_keep": 0})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "min_keep" in failure.step_failure_data.error.message
    assert world.local_names() == before


def test_definitions_wiring():
    schedule = defs.resolve_schedule_def("retention_schedule")
    assert schedule.execution_timezone == "Africa/Harare" and schedule.cron_schedule == "0 4 * * *"
    job = defs.resolve_job_def("retention_job")
    assert job.tags["loyalty_ops/severity"] == "warning"
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"retention_plan", "retention_cleanup"} <= keys


def test_unreachable_s3_fails_before_deleting_anything(world, s3_server):
    from loyalty_ops.defs.resources import OffsiteStorage
    from devstack.postgres_cluster import free_port
    from dagster_aws.s3 import S3Resource

    for d in range(0, 35, 5):
        world.add(d, offsite=False)
    world.record(range(0, 35, 5))
    before = world.local_names()
    resources = retention_resources(world, s3_server)
    dead = S3Resource(
        endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y", max_attempts=1,
    )
    resources["offsite"] = OffsiteStorage(s3=dead, bucket=world.bucket, prefix=PREFIX)
    job = defs.resolve_job_def("retention_job")
    result = job.execute_in_process(resources=resources, instance=world.instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "nothing was planned or deleted" in failure.step_failure_data.error.message
    assert world.local_names() == before


def test_cleanup_of_an_older_plan_replans_and_deletes_only_the_intersection(world, s3_server):
    for d in range(0, 11):
        world.add(d)
    world.record(range(0, 11))
    from loyalty_ops.defs.retention.assets import retention_cleanup, retention_plan

    resources = retention_resources(world, s3_server, keep_days=7)
    plan_run = dg.materialize([retention_plan], resources=resources, instance=world.instance)
    assert materialization_metadata(plan_run, "retention_plan")["local_delete"] == 4 * 3
    # Since the plan was made, backup 9's offsite copy vanished: the fresh plan keeps it locally.
    world.client.delete_object(Bucket=world.bucket, Key=world.names[9].s3_key(PREFIX))
    cleanup_run = dg.materialize(
        [retention_plan, retention_cleanup], selection=[retention_cleanup], resources=resources, instance=world.instance
    )
    assert cleanup_run.success
    meta = materialization_metadata(cleanup_run, "retention_cleanup")
    assert meta["replanned"] is True and meta["deleted_local_backups"] == 3
    local = world.local_names()
    assert world.names[9].filename in local
    assert all(world.names[d].filename not in local for d in (7, 8, 10))


def test_s3_refusing_deletes_fails_the_run_after_the_safe_part(world, s3_server):
    import json

    for d in range(0, 10):
        world.add(d)
    world.record(range(0, 10))
    locked = world.names[8].s3_key(PREFIX)
    policy = {
        "Version": "2012-10-17",
        # s3:* (not only DeleteObject): the copy can then not be confirmed either, as with a lost endpoint.
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": f"arn:aws:s3:::{world.bucket}/{locked}"}],
    }
    world.client.put_bucket_policy(Bucket=world.bucket, Policy=json.dumps(policy))
    try:
        result = run_retention(world, s3_server, keep_days=7)
    finally:
        world.client.delete_bucket_policy(Bucket=world.bucket)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "AccessDenied" in failure.step_failure_data.error.message or "errors" in failure.step_failure_data.error.message
    local = world.local_names()
    assert world.names[8].filename in local and world.names[8].filename + ".sha256" in local  # offsite status unknown
    assert world.names[7].filename not in local and world.names[9].filename not in local
    assert locked in world.keys()


def test_an_s3_object_without_its_sha256_sidecar_does_not_allow_deleting_the_local_copy(world, s3_server):
    for d in range(0, 10):
        world.add(d)
    world.record(range(0, 10))
    # 8: the sidecar upload failed after the object completed. 9: a sidecar of the right size, wrong checksum.
    world.client.delete_object(Bucket=world.bucket, Key=world.names[8].s3_key(PREFIX) + ".sha256")
    wrong = f"{'0' * 64}  {world.names[9].filename}\n".encode()
    world.client.put_object(Bucket=world.bucket, Key=world.names[9].s3_key(PREFIX) + ".sha256", Body=wrong)

    result = run_retention(world, s3_server, keep_days=7)
    assert result.success
    local = world.local_names()
    for d in (8, 9):
        assert world.names[d].filename in local and world.names[d].filename + ".sha256" in local, d
    assert world.names[7].filename not in local  # object and sidecars all there and matching: deleted
    meta = materialization_metadata(result, "retention_plan")
    assert meta["kept_not_offsite"] == 2
    kept = meta["plan"].split("## Kept locally because no offsite copy is confirmed")[1].split("##")[0]
    assert f"`{world.names[8].filename}`" in kept and "sidecar .sha256 missing on S3" in kept
    assert f"`{world.names[9].filename}`" in kept and "MISMATCH" in kept and "the .sha256 sidecar on S3 says sha256 " + "0" * 64 in kept

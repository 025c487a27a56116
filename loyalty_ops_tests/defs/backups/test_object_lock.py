"""Immutable offsite copies (S3 Object Lock), on moto's S3 server.

What moto emulates and is tested here: a bucket created with Object Lock (GetObjectLockConfiguration), a
bucket without it (ObjectLockConfigurationNotFoundError), objects put with ObjectLockMode and
ObjectLockRetainUntilDate (shown by HeadObject), and the refusal to delete a locked version (AccessDenied).
What moto cannot emulate, so it is not asserted: GetObjectRetention answers HTTP 500; retention given to
CreateMultipartUpload is not applied to the completed object (a locked backup is therefore never streamed
in parts here: it is uploaded after its checks, and our test files are single-part); BypassGovernanceRetention
and COMPLIANCE mode are not enforced differently from GOVERNANCE.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import botocore
import dagster as dg
import pytest

from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.defs.resources import OffsiteStorage
from loyalty_ops.lib.backup.naming import backup_name
from loyalty_ops.lib.retention.plan import DELETE, KEEP, Evidence, IntegrityResult, Inventory, RemoteObject, RetentionPolicy, plan_retention
from loyalty_ops_tests.helpers import materialization_metadata


def _run(ops_resources, instance, bucket, days=2):
    offsite = OffsiteStorage(s3=ops_resources["offsite"].s3, bucket=bucket, prefix="backups/", object_lock_days=days)
    return dg.materialize([database_backup, *BACKUP_CHECKS, offsite_backup_copy],
                          resources={**ops_resources, "offsite": offsite}, instance=instance, raise_on_error=False)


def test_locking_asked_for_a_bucket_without_object_lock_is_refused_before_anything_is_written(
    ops_resources, dagster_instance, s3_client, s3_bucket, backup_dir
):
    result = _run(ops_resources, dagster_instance, s3_bucket)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    assert "does not have Object Lock enabled" in message and "Nothing was written" in message
    assert list(backup_dir.iterdir()) == []
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_every_object_is_locked_and_a_locked_version_cannot_be_deleted(ops_resources, dagster_instance, s3_client):
    bucket = f"loyalty-locked-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    started = datetime.now(timezone.utc)
    result = _run(ops_resources, dagster_instance, bucket, days=2)
    assert result.success
    copy = materialization_metadata(result, "offsite_backup_copy")
    assert copy["verified"] is True and copy["streamed"] is False and copy["object_lock_days"] == 2
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 4  # the backup, its globals, .sha256, .manifest.json
    for key in keys:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        until = head["ObjectLockRetainUntilDate"]
        assert started + timedelta(days=2) - timedelta(minutes=1) <= until <= datetime.now(timezone.utc) + timedelta(days=2)
    head = s3_client.head_object(Bucket=bucket, Key=copy["key"])
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3_client.delete_object(Bucket=bucket, Key=copy["key"], VersionId=head["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


def test_retention_never_plans_to_delete_a_locked_copy_early_and_says_so():
    now = datetime(2026, 12, 2, 2, 0, tzinfo=timezone.utc)
    names = [backup_name("loyalty", now - timedelta(days=d)) for d in (0, 1, 2, 40, 41)]
    # Backups 40 and 41 days old: 41's copy was uploaded 41 days ago, 40's was re-uploaded 5 days ago.
    uploaded = {names[3].filename: now - timedelta(days=5), names[4].filename: now - timedelta(days=41)}
    remote = tuple(
        RemoteObject(n.s3_key("backups/") + suffix, 100, uploaded.get(n.filename, n.taken_at))
        for n in names for suffix in ("", ".sha256", ".manifest.json")
    )
    evidence = Evidence(integrity={n.filename: IntegrityResult(True) for n in names})
    plan = plan_retention(Inventory("loyalty", remote=remote), evidence, RetentionPolicy(object_lock_days=35), now)
    s3 = {i.name: i for i in plan.items if i.location == "s3" and i.kind == "backup"}
    held = s3[names[3].s3_key("backups/")]
    assert held.action == KEEP and "locked by S3 Object Lock until 2027-01-01" in held.reason
    assert "LOYALTY_S3_OBJECT_LOCK_DAYS=35" in held.reason
    expired = s3[names[4].s3_key("backups/")]
    assert expired.action == DELETE and "Object Lock ended" in expired.reason
    unlocked = plan_retention(Inventory("loyalty", remote=remote), evidence, RetentionPolicy(), now)
    assert {i.action for i in unlocked.items if i.location == "s3" and names[3].filename in i.name} == {DELETE}

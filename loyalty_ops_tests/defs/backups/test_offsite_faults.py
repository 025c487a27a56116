"""The offsite copy step when S3 misbehaves, through a real proxy in front of moto, with real backups of the
test cluster: it is never reported verified unless object and sidecars are all there, a failed completion
leaves no upload, a killed run's upload is aborted by the next backup, and the step copies its own run's
backup."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from devstack.s3_endpoint import LOCAL_CREDENTIALS
from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.defs.resources import OffsiteStorage
from loyalty_ops.lib.backup.offsite import offsite_copy_status
from loyalty_ops_tests.helpers import materialization_metadata
from loyalty_ops_tests.s3_fault_proxy import S3FaultProxy

ALL = [database_backup, offsite_backup_copy, *BACKUP_CHECKS]
UPLOAD_ONLY = dg.AssetSelection.assets(offsite_backup_copy)
BACKUP_AND_CHECKS = dg.AssetSelection.assets(database_backup)  # with its checks


@pytest.fixture
def proxy(s3_server):
    with S3FaultProxy(s3_server.endpoint_url) as running:
        yield running


@pytest.fixture
def proxied_resources(ops_resources, proxy, s3_bucket) -> dict:
    """The shared resources, with S3 reached through the misbehaving proxy."""
    s3 = S3Resource(
        endpoint_url=proxy.endpoint_url,
        region_name=LOCAL_CREDENTIALS["AWS_REGION"],
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        max_attempts=2,
    )
    return {**ops_resources, "offsite": OffsiteStorage(s3=s3, bucket=s3_bucket, prefix="backups/")}


def run(resources, instance, selection=None, tags=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(ALL, selection=selection, resources=resources, instance=instance, raise_on_error=False, tags=tags)


def offsite_failure(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.get_step_failure_events() if e.step_key == "offsite_backup_copy"]
    assert failures, "offsite_backup_copy did not fail"
    data = failures[0].step_failure_data
    return (data.user_failure_data.description if data.user_failure_data else None) or data.error.message


def offsite_materializations(result) -> list:
    return [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("offsite_backup_copy")]


def run_logs(instance, run_id) -> str:
    return "\n".join(entry.user_message for entry in instance.all_logs(run_id))


def test_a_sidecar_s3_keeps_refusing_fails_the_copy_clearly_and_it_is_never_verified(
    proxied_resources, proxy, dagster_instance, s3_client, s3_bucket
):
    proxy.fail(lambda r: r.method == "PUT" and r.path.endswith(".sha256"))
    result = run(proxied_resources, dagster_instance)
    backup = materialization_metadata(result, "database_backup")
    key = backup["pending_upload_key"]
    message = offsite_failure(result)
    assert f"s3://{s3_bucket}/{key}.sha256" in message and "run offsite_backup_copy again" in message
    assert "S3UploadFailedError" not in message
    assert offsite_materializations(result) == []  # verified: true is never reported
    assert not offsite_copy_status(s3_client, s3_bucket, key).complete

    # The launchpad's max_attempts sets botocore's retries for this copy: 0 retries is one PUT per sidecar try.
    before = len(proxy.requests("PUT", ".sha256"))
    once = dg.materialize(
        ALL, selection=UPLOAD_ONLY, resources=proxied_resources, instance=dagster_instance, raise_on_error=False,
        run_config={"ops": {"offsite_backup_copy": {"config": {"max_attempts": 0}}}},
    )
    assert "run offsite_backup_copy again" in offsite_failure(once)
    assert len(proxy.requests("PUT", ".sha256")) == before + 1

    # S3 recovers: running the copy again completes it (the streamed upload is gone; the file goes up whole).
    proxy.clear()
    retry = run(proxied_resources, dagster_instance, selection=UPLOAD_ONLY)
    copied = materialization_metadata(retry, "offsite_backup_copy")
    assert copied["verified"] is True and copied["key"] == key and copied["streamed"] is False
    status = offsite_copy_status(s3_client, s3_bucket, key, expected_sha256=backup["sha256"], expected_bytes=backup["bytes"])
    assert status.complete, status.problems


def test_a_sidecar_upload_that_fails_once_is_retried_within_the_run(proxied_resources, proxy, dagster_instance, s3_client, s3_bucket):
    proxy.fail(lambda r: r.method == "PUT" and r.path.endswith(".manifest.json"), times=1)
    result = run(proxied_resources, dagster_instance)
    assert result.success
    copied = materialization_metadata(result, "offsite_backup_copy")
    assert copied["verified"] is True and copied["streamed"] is True
    assert [status for _r, status in proxy.requests("PUT", ".manifest.json")] == [500, 200]
    head = s3_client.head_object(Bucket=s3_bucket, Key=copied["key"])
    assert head["Metadata"] == {"sha256": copied["sha256"]}  # the streamed object carries its own checksum


def test_a_streamed_upload_that_fails_at_complete_leaves_no_multipart_upload(
    proxied_resources, proxy, dagster_instance, s3_client, s3_bucket
):
    proxy.fail(lambda r: r.method == "POST" and "uploadId=" in r.query)  # CompleteMultipartUpload
    result = run(proxied_resources, dagster_instance)
    assert "completing the streamed upload" in offsite_failure(result)
    assert len(proxy.requests("POST", query="uploadId=")) == 3  # botocore's retries, then the abort
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)


def test_an_upload_abandoned_by_a_killed_run_is_aborted_by_the_next_backup(
    ops_resources, dagster_instance, s3_client, s3_bucket, loyalty_db
):
    killed = f"backups/2026/01/01/{loyalty_db}_20260101_020000.dump.gz"
    other_database = "backups/2026/01/01/billing_20260101_020000.dump.gz"
    for key in (killed, other_database):
        upload_id = s3_client.create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"]
        s3_client.upload_part(Bucket=s3_bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
    result = run(ops_resources, dagster_instance)
    assert result.success
    left = [u["Key"] for u in s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert left == [other_database]  # another database's upload is not ours to judge
    assert f"aborted an abandoned multipart upload of s3://{s3_bucket}/{killed}" in run_logs(dagster_instance, result.run_id)


def test_a_retried_offsite_step_copies_its_own_runs_backup_not_a_newer_one(
    proxied_resources, proxy, dagster_instance, s3_client, s3_bucket
):
    proxy.fail(lambda r: r.method == "PUT" and r.path.endswith(".sha256"))
    first = run(proxied_resources, dagster_instance)
    own = materialization_metadata(first, "database_backup")
    offsite_failure(first)
    proxy.clear()
    newer = run(proxied_resources, dagster_instance, selection=BACKUP_AND_CHECKS)  # another run's backup, later
    assert materialization_metadata(newer, "database_backup")["filename"] != own["filename"]

    # Re-executing the first run's failed step (Dagster marks a re-execution with these tags).
    retry = run(
        proxied_resources, dagster_instance, selection=UPLOAD_ONLY,
        tags={"dagster/parent_run_id": first.run_id, "dagster/root_run_id": first.run_id},
    )
    copied = materialization_metadata(retry, "offsite_backup_copy")
    assert copied["filename"] == own["filename"] and copied["source_run_id"] == first.run_id
    assert copied["verified"] is True

    # Launched alone, the copy takes the newest backup.
    alone = materialization_metadata(run(proxied_resources, dagster_instance, selection=UPLOAD_ONLY), "offsite_backup_copy")
    assert alone["source_run_id"] == newer.run_id

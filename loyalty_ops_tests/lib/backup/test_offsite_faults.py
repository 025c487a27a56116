"""The offsite copy when S3 misbehaves: a real proxy in front of moto answers 500 (or hangs up) on chosen
requests. A hiccup is retried by botocore and the copy is verified; a persistent failure is a clear
message, the copy never counts as offsite, and no multipart upload is left behind."""

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup.offsite import (
    OffsiteError,
    StreamingUpload,
    abort_abandoned_uploads,
    complete_pending_upload,
    offsite_copy_status,
    upload_backup,
)
from loyalty_ops_tests.s3_fault_proxy import S3FaultProxy

MIB = 1024 * 1024
KEY = "backups/2026/01/01/loyalty_20260101_000000.dump.gz"


def make_backup(directory: Path, size: int) -> Path:
    path = directory / "loyalty_20260101_000000.dump.gz"
    path.write_bytes(os.urandom(size))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
    Path(f"{path}.manifest.json").write_text(json.dumps({"sha256": digest, "bytes": size}))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def proxy(s3_server):
    with S3FaultProxy(s3_server.endpoint_url) as running:
        yield running


def no_uploads_left(s3_client, bucket):
    return s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_sidecar_upload_that_fails_once_is_retried_and_the_copy_is_verified(proxy, s3_client, s3_bucket, tmp_path):
    backup = make_backup(tmp_path, 1 * MIB)
    proxy.fail(lambda r: r.method == "PUT" and r.path.endswith(".sha256"), times=1)
    uploaded = upload_backup(proxy.client(), BackupLocation(tmp_path, s3_bucket), backup, KEY, sha(backup))
    assert uploaded.verified
    assert [status for _r, status in proxy.requests("PUT", ".sha256")] == [500, 200]
    status = offsite_copy_status(s3_client, s3_bucket, KEY, expected_sha256=sha(backup), expected_bytes=1 * MIB)
    assert status.complete, status.problems


def test_a_sidecar_that_cannot_be_uploaded_fails_clearly_and_the_copy_never_counts(proxy, s3_client, s3_bucket, tmp_path):
    backup = make_backup(tmp_path, 1 * MIB)
    proxy.fail(lambda r: r.method == "PUT" and r.path.endswith(".sha256"))
    with pytest.raises(OffsiteError) as failure:
        upload_backup(proxy.client(), BackupLocation(tmp_path, s3_bucket), backup, KEY, sha(backup))
    message = str(failure.value)
    assert f"s3://{s3_bucket}/{KEY}.sha256" in message and "run offsite_backup_copy again" in message
    assert "S3UploadFailedError" not in message and "Traceback" not in message
    assert len(proxy.requests("PUT", ".sha256")) == 3  # botocore's retries (max_attempts=2 → 3 tries), no more
    status = offsite_copy_status(s3_client, s3_bucket, KEY)
    assert not status.complete and any(".sha256 is missing" in p for p in status.problems)
    # The object that did arrive still carries its checksum.
    assert s3_client.head_object(Bucket=s3_bucket, Key=KEY)["Metadata"] == {"sha256": sha(backup)}


def test_an_object_upload_that_keeps_failing_is_a_clear_message_not_s3_upload_failed_error(proxy, s3_client, s3_bucket, tmp_path):
    backup = make_backup(tmp_path, 1 * MIB)
    proxy.fail(lambda r: r.method == "PUT" and r.path.endswith(".dump.gz"))
    with pytest.raises(OffsiteError) as failure:
        upload_backup(proxy.client(), BackupLocation(tmp_path, s3_bucket), backup, KEY, sha(backup))
    message = str(failure.value)
    assert f"s3://{s3_bucket}/{KEY}" in message and "check the S3 endpoint" in message
    assert "S3UploadFailedError" not in message
    assert not offsite_copy_status(s3_client, s3_bucket, KEY).complete


def test_a_managed_multipart_upload_that_fails_at_complete_leaves_no_upload(proxy, s3_client, s3_bucket, tmp_path):
    backup = make_backup(tmp_path, 11 * MIB)
    proxy.fail(lambda r: r.method == "POST" and "uploadId=" in r.query)
    with pytest.raises(OffsiteError, match="check the S3 endpoint"):
        upload_backup(proxy.client(), BackupLocation(tmp_path, s3_bucket), backup, KEY, sha(backup), chunk_bytes=5 * MIB)
    assert no_uploads_left(s3_client, s3_bucket)
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)


def test_a_streamed_upload_that_fails_at_complete_is_aborted_at_once(proxy, s3_client, s3_bucket, tmp_path):
    backup = make_backup(tmp_path, 11 * MIB)
    client = proxy.client()
    upload = StreamingUpload(client, BackupLocation(tmp_path, s3_bucket), KEY, part_bytes=5 * MIB)
    upload.write(backup.read_bytes())
    pending = upload.finish()
    assert pending is not None and not no_uploads_left(s3_client, s3_bucket)
    proxy.fail(lambda r: r.method == "POST" and "uploadId=" in r.query)
    with pytest.raises(OffsiteError, match="completing the streamed upload of .* aborted the upload"):
        complete_pending_upload(client, pending, backup, sha(backup))
    assert no_uploads_left(s3_client, s3_bucket)  # not left for retention a day later
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)


def test_a_streamed_object_that_cannot_be_stamped_with_its_checksum_is_removed(proxy, s3_client, s3_bucket, tmp_path):
    backup = make_backup(tmp_path, 6 * MIB)
    client = proxy.client()
    upload = StreamingUpload(client, BackupLocation(tmp_path, s3_bucket), KEY, part_bytes=5 * MIB)
    upload.write(backup.read_bytes())
    pending = upload.finish()
    proxy.fail(lambda r: r.method == "PUT" and r.path.endswith(".dump.gz") and not r.query)  # the CopyObject
    with pytest.raises(OffsiteError, match="deleted the object"):
        complete_pending_upload(client, pending, backup, sha(backup))
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)  # no object without its checksum
    assert no_uploads_left(s3_client, s3_bucket)


def test_a_dropped_connection_on_a_part_stops_streaming_without_leaving_an_upload(proxy, s3_client, s3_bucket, tmp_path):
    backup = make_backup(tmp_path, 11 * MIB)
    proxy.fail(lambda r: r.method == "PUT" and "partNumber=2" in r.query, action="drop")
    messages = []
    upload = StreamingUpload(proxy.client(), BackupLocation(tmp_path, s3_bucket), KEY, part_bytes=5 * MIB, log=messages.append)
    upload.write(backup.read_bytes())
    assert upload.finish() is None
    assert "part 2 failed" in messages[0] and "uploaded instead" in messages[0]
    assert no_uploads_left(s3_client, s3_bucket)


def test_abandoned_uploads_of_old_backups_are_aborted_and_live_ones_left_alone(s3_client, s3_bucket, tmp_path):
    now = datetime(2026, 12, 2, 3, 0, tzinfo=timezone.utc)

    def start(key):
        return s3_client.create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"]

    old = start("backups/2026/12/01/loyalty_20261201_020000.dump.gz")  # a run SIGKILLed last night
    live = start(f"backups/2026/12/02/loyalty_{(now - timedelta(minutes=20)):%Y%m%d_%H%M%S}.dump.gz")  # running now
    other_db = start("backups/2026/12/01/billing_20261201_020000.dump.gz")
    odd = start("backups/2026/12/01/notes.txt")
    aborted = abort_abandoned_uploads(s3_client, BackupLocation(tmp_path, s3_bucket, "backups/"), "loyalty", now=now)
    assert [(a.key, a.upload_id) for a in aborted] == [("backups/2026/12/01/loyalty_20261201_020000.dump.gz", old)]
    assert aborted[0].age_hours == 25.0
    left = {u["UploadId"] for u in s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])}
    assert left == {live, other_db, odd}

"""offsite_copy_status: a backup counts as offsite only when the object and both sidecars are in S3 and agree."""

import hashlib
import json
import os

import pytest

from devstack.s3_endpoint import LOCAL_CREDENTIALS
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup.offsite import offsite_copy_status, upload_backup

KEY = "backups/2026/01/01/loyalty_20260101_000000.dump.gz"


@pytest.fixture
def complete_copy(tmp_path, s3_client, s3_bucket):
    path = tmp_path / "loyalty_20260101_000000.dump.gz"
    path.write_bytes(os.urandom(300_000))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / f"{path.name}.sha256").write_text(f"{digest}  {path.name}\n")
    (tmp_path / f"{path.name}.manifest.json").write_text(json.dumps({"sha256": digest, "bytes": 300_000}))
    upload_backup(s3_client, BackupLocation(path.parent, s3_bucket), path, KEY, digest)
    return digest


def test_a_copy_with_object_and_both_sidecars_in_agreement_is_complete(s3_client, s3_bucket, complete_copy):
    status = offsite_copy_status(s3_client, s3_bucket, KEY, expected_sha256=complete_copy, expected_bytes=300_000)
    assert status.complete and status.problems == ()
    assert status.sha256 == complete_copy and status.bytes == 300_000
    assert status.sidecar_keys == (KEY + ".sha256", KEY + ".manifest.json")


def test_a_missing_manifest_makes_the_copy_incomplete(s3_client, s3_bucket, complete_copy):
    s3_client.delete_object(Bucket=s3_bucket, Key=KEY + ".manifest.json")
    status = offsite_copy_status(s3_client, s3_bucket, KEY)
    assert not status.complete and status.problems == ("loyalty_20260101_000000.dump.gz.manifest.json is missing",)


def test_a_sidecar_naming_another_hash_makes_the_copy_incomplete(s3_client, s3_bucket, complete_copy):
    s3_client.put_object(Bucket=s3_bucket, Key=KEY + ".sha256", Body=b"0" * 64 + b"  x\n")
    status = offsite_copy_status(s3_client, s3_bucket, KEY)
    assert not status.complete and "the object's metadata says" in status.problems[0]


def test_an_object_without_its_sha256_metadata_is_not_complete(s3_client, s3_bucket, complete_copy):
    body = s3_client.get_object(Bucket=s3_bucket, Key=KEY)["Body"].read()
    s3_client.put_object(Bucket=s3_bucket, Key=KEY, Body=body)  # what a streamed upload left before the fix
    status = offsite_copy_status(s3_client, s3_bucket, KEY)
    assert not status.complete and "x-amz-meta-sha256" in status.problems[0]


def test_an_object_whose_content_differs_from_its_metadata_is_not_complete(s3_client, s3_bucket, complete_copy):
    s3_client.put_object(
        Bucket=s3_bucket, Key=KEY, Body=os.urandom(300_000), Metadata={"sha256": complete_copy}, ChecksumAlgorithm="SHA256"
    )
    status = offsite_copy_status(s3_client, s3_bucket, KEY, expected_sha256=complete_copy, expected_bytes=300_000)
    assert not status.complete and status.problems == ("S3's ChecksumSHA256 of the object differs from its sha256 metadata",)


def test_a_missing_object_and_a_local_size_mismatch_are_named(s3_client, s3_bucket, complete_copy):
    assert offsite_copy_status(s3_client, s3_bucket, KEY, expected_bytes=1).problems == (
        "the object has 300000 bytes, the local backup 1",
    )
    s3_client.delete_object(Bucket=s3_bucket, Key=KEY)
    assert offsite_copy_status(s3_client, s3_bucket, KEY).problems[0] == "the object is missing"


def test_an_s3_that_refuses_the_credentials_is_unreadable_not_missing(s3_server, s3_bucket, complete_copy):
    import boto3

    # moto accepts any key by default; a bucket that does not exist is the refusal we can make for real.
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=LOCAL_CREDENTIALS["AWS_REGION"],
                          aws_access_key_id="x", aws_secret_access_key="y")
    status = offsite_copy_status(client, "no-such-bucket-here", KEY)
    assert not status.complete and status.unreadable and "does not exist" in status.problems[0]

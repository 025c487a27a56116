"""The offsite copy against moto's real S3 server: managed upload, streamed upload, verification."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from loyalty_ops.lib.backup.location import BackupLocation, LocationError
from loyalty_ops.lib.backup.offsite import (
    OffsiteError,
    StreamingUpload,
    complete_pending_upload,
    expected_s3_checksum,
    streaming_part_bytes,
    upload_backup,
    verify_remote_copy,
)
from loyalty_ops.lib.backup.offsite_status import part_checksums

MIB = 1024 * 1024


@pytest.fixture
def backup_file(tmp_path):
    path = tmp_path / "loyalty_20260101_000000.dump.gz"
    path.write_bytes(os.urandom(11 * MIB))
    write_sidecars(path)
    return path


def write_sidecars(path):
    """The .sha256 and .manifest.json a real backup has next to it."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
    Path(f"{path}.manifest.json").write_text(json.dumps({"sha256": digest, "bytes": path.stat().st_size}))


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_managed_upload_is_verified_and_multipart(s3_client, s3_bucket, backup_file):
    uploaded = upload_backup(
        s3_client, BackupLocation(backup_file.parent, s3_bucket, storage_class="STANDARD_IA"), backup_file, "p/x.dump.gz", sha(backup_file),
        chunk_bytes=5 * MIB,
    )
    assert uploaded.verified and uploaded.bytes == backup_file.stat().st_size
    head = s3_client.head_object(Bucket=s3_bucket, Key="p/x.dump.gz")
    assert head["StorageClass"] == "STANDARD_IA" and head["ServerSideEncryption"] == "AES256"


def test_verification_catches_an_object_that_differs(s3_client, s3_bucket, backup_file):
    s3_client.put_object(Bucket=s3_bucket, Key="p/x.dump.gz", Body=backup_file.read_bytes()[:-1] + b"!")
    with pytest.raises(OffsiteError, match="does not match the local backup"):
        verify_remote_copy(
            s3_client, s3_bucket, "p/x.dump.gz", backup_file, sha(backup_file),
            expected_checksum=expected_s3_checksum(backup_file),
        )


def test_streamed_upload_is_invisible_until_completed(s3_client, s3_bucket, backup_file):
    upload = StreamingUpload(s3_client, BackupLocation(backup_file.parent, s3_bucket), "p/s.dump.gz", part_bytes=5 * MIB)
    data = backup_file.read_bytes()
    for i in range(0, len(data), 777_777):  # blocks that straddle part boundaries
        upload.write(data[i : i + 777_777])
    pending = upload.finish()
    assert pending is not None and pending.parts == 3
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)
    size, checksum = complete_pending_upload(s3_client, pending, backup_file, sha(backup_file))
    assert size == len(data) and checksum
    stored = s3_client.get_object(Bucket=s3_bucket, Key="p/s.dump.gz")
    assert stored["Body"].read() == data
    assert stored["Metadata"] == {"sha256": sha(backup_file)}  # the object carries its own checksum


def test_a_streamed_object_over_the_copy_limit_is_stamped_part_by_part(s3_client, s3_bucket, backup_file):
    target = BackupLocation(backup_file.parent, s3_bucket, storage_class="STANDARD_IA")
    upload = StreamingUpload(s3_client, target, "p/big.dump.gz", part_bytes=5 * MIB)
    upload.write(backup_file.read_bytes())
    pending = upload.finish()
    size, checksum = complete_pending_upload(
        s3_client, pending, backup_file, sha(backup_file), location=target, copy_limit_bytes=1 * MIB
    )
    _parts, composite = part_checksums(backup_file, 5 * MIB)
    assert checksum.split("-")[0] == composite.split("-")[0]  # the composite of the original part boundaries
    head = s3_client.head_object(Bucket=s3_bucket, Key="p/big.dump.gz")
    assert head["ETag"].endswith('-3"')  # copied part by part, as an object over CopyObject's limit must be
    assert head["Metadata"] == {"sha256": sha(backup_file)} and head["ContentLength"] == size
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_streamed_parts_that_differ_from_the_file_are_aborted(s3_client, s3_bucket, backup_file):
    upload = StreamingUpload(s3_client, BackupLocation(backup_file.parent, s3_bucket), "p/bad.dump.gz", part_bytes=5 * MIB)
    upload.write(backup_file.read_bytes())
    pending = upload.finish()
    data = bytearray(backup_file.read_bytes())
    data[6 * MIB] ^= 1  # the file on disk no longer matches what was streamed
    backup_file.write_bytes(bytes(data))
    # Caught before completion where the store lists part checksums, after it (and deleted) where not (moto).
    with pytest.raises(OffsiteError, match="part 2 differs|deleted the object"):
        complete_pending_upload(s3_client, pending, backup_file, sha(backup_file))
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)


def test_part_size_is_bounded():
    assert streaming_part_bytes(0) == 8 * MIB
    assert streaming_part_bytes(200 * 1024 * MIB) == 26 * MIB  # 200 GB in <= 9,500 parts
    assert streaming_part_bytes(10 * 1024 * 1024 * MIB) is None  # 10 TB: upload after the checks instead


def test_bad_sse_settings_name_the_variable(s3_bucket, backup_file):
    # Refused when the location is made, before anything is uploaded.
    with pytest.raises(LocationError, match="LOYALTY_S3_SSE"):
        BackupLocation(backup_file.parent, s3_bucket, sse="rot13")
    with pytest.raises(LocationError, match="LOYALTY_S3_STORAGE_CLASS"):
        BackupLocation(backup_file.parent, s3_bucket, storage_class="CHEAP")

"""The one backup-location object (key scheme, prefix, sidecars, strict names, upload settings) and the one
paginated inventory, on moto's S3 server."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from loyalty_ops.lib.backup.inventory import list_local_files, list_multipart_uploads, list_objects
from loyalty_ops.lib.backup.location import DEFAULT_PREFIX, BackupLocation, LocationError
from loyalty_ops.lib.backup.naming import backup_name

TAKEN = datetime(2026, 11, 27, 2, 0, 5, tzinfo=timezone.utc)
NAME = backup_name("loyalty", TAKEN)


@pytest.mark.parametrize(
    "prefix, normalised",
    [("backups/", "backups/"), ("backups", "backups/"), ("", ""), ("/", ""), ("a/b/", "a/b/"), ("/a/b", "a/b/"), ("//a/b//", "a/b/")],
)
def test_prefix_is_normalised_once_and_keys_follow_the_date_scheme(prefix, normalised, tmp_path):
    location = BackupLocation(tmp_path, "bucket", prefix)
    assert location.prefix == normalised
    key = location.key_for(NAME)
    assert key == f"{normalised}2026/11/27/loyalty_20261127_020005.dump.gz"
    assert location.parse_key(key) == NAME
    assert location.uri_for(key) == f"s3://bucket/{key}"
    assert location.prefix_uri == f"s3://bucket/{normalised}"


def test_the_default_prefix_and_the_local_names(tmp_path):
    location = BackupLocation(tmp_path)
    assert location.prefix == DEFAULT_PREFIX == "backups/"
    assert not location.offsite_configured and location.bucket is None
    assert location.local_path_for(NAME) == tmp_path / "loyalty_20261127_020005.dump.gz"
    assert location.safety_dir == tmp_path / "safety"
    assert location.describe() == str(tmp_path)
    assert BackupLocation(str(tmp_path), "  ").bucket is None  # an empty LOYALTY_S3_BUCKET is no bucket


def test_sidecar_names_are_the_same_on_disk_and_on_s3(tmp_path):
    location = BackupLocation(tmp_path, "bucket")
    assert location.sidecar_names(NAME.filename) == (
        "loyalty_20261127_020005.dump.gz.sha256",
        "loyalty_20261127_020005.dump.gz.manifest.json",
    )
    key = location.key_for(NAME)
    assert location.sidecar_names(key) == (key + ".sha256", key + ".manifest.json")


@pytest.mark.parametrize(
    "key",
    [
        "backups/2026/11/27/loyalty_20261127_020005.dump.gz.sha256",  # a sidecar is not a backup
        "backups/2026/11/27/loyalty_20261127_020005.dump.gz.manifest.json",
        "backups/loyalty_20261127_020005.dump.gz",  # flat layout
        "backups/2026/11/28/loyalty_20261127_020005.dump.gz",  # off its own date
        "backups/x/2026/11/27/loyalty_20261127_020005.dump.gz",  # junk between prefix and date
        "backups2/2026/11/27/loyalty_20261127_020005.dump.gz",  # a sibling prefix
        "other/2026/11/27/loyalty_20261127_020005.dump.gz",
        "backups/2025/13/01/loyalty_20251301_000000.dump.gz",  # month 13
        "backups/2026/11/27/.loyalty_20261127_020005.dump.gz.partial-12",
        "backups/2026/11/27/notes.txt",
    ],
)
def test_stray_keys_are_not_backups(key, tmp_path):
    assert BackupLocation(tmp_path, "bucket", "backups/").parse_key(key) is None


def test_strict_names(tmp_path):
    location = BackupLocation(tmp_path)
    assert location.parse_name(NAME.filename) == NAME
    assert location.parse_name("loyalty_20251301_000000.dump.gz") is None
    assert location.parse_name(NAME.filename + ".sha256") is None


def test_upload_settings_are_refused_when_made_naming_the_variable_and_an_example(tmp_path):
    with pytest.raises(LocationError, match=r"LOYALTY_S3_SSE must be one of AES256, aws:kms, got 'rot13' \(e.g. LOYALTY_S3_SSE=AES256\)"):
        BackupLocation(tmp_path, "bucket", sse="rot13")
    with pytest.raises(LocationError, match=r"LOYALTY_S3_STORAGE_CLASS .* got 'CHEAP' \(e.g. LOYALTY_S3_STORAGE_CLASS=STANDARD_IA\)"):
        BackupLocation(tmp_path, "bucket", storage_class="CHEAP")
    with pytest.raises(LocationError, match="set LOYALTY_S3_SSE=aws:kms"):
        BackupLocation(tmp_path, "bucket", kms_key_id="alias/backups")
    # Without a bucket nothing is uploaded, so the upload settings are not judged.
    assert BackupLocation(tmp_path, None, sse="rot13").offsite_configured is False
    kms = BackupLocation(tmp_path, "bucket", sse="aws:kms", kms_key_id="alias/backups", storage_class="STANDARD_IA")
    assert kms.upload_args() == {
        "ServerSideEncryption": "aws:kms", "StorageClass": "STANDARD_IA", "ChecksumAlgorithm": "SHA256",
        "SSEKMSKeyId": "alias/backups",
    }


def test_inventory_follows_every_page(s3_client, s3_bucket, tmp_path):
    location = BackupLocation(tmp_path, s3_bucket, "/deep/prefix/")
    names = [backup_name("loyalty", TAKEN - timedelta(hours=h)) for h in range(230)]
    for name in names:
        s3_client.put_object(Bucket=s3_bucket, Key=location.key_for(name), Body=b"x")
    s3_client.put_object(Bucket=s3_bucket, Key="elsewhere/x", Body=b"x")  # outside the prefix
    requests = []
    s3_client.meta.events.register("before-parameter-build.s3.ListObjectsV2", lambda **kw: requests.append(kw["params"]))
    listed = list_objects(s3_client, location, page_size=50)
    assert len(requests) == 5 and all(r["MaxKeys"] == 50 for r in requests)
    assert sorted(o.key for o in listed) == sorted(location.key_for(n) for n in names)
    assert {o.size for o in listed} == {1}
    assert all(location.parse_key(o.key) is not None for o in listed)


def test_multipart_inventory_follows_every_page(s3_client, s3_bucket, tmp_path):
    location = BackupLocation(tmp_path, s3_bucket, "backups")
    keys = {location.key_for(backup_name("loyalty", TAKEN - timedelta(days=d))) for d in range(25)}
    started = {s3_client.create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"] for key in keys}
    s3_client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/loyalty_20261127_020005.dump.gz")
    requests = []
    s3_client.meta.events.register("before-parameter-build.s3.ListMultipartUploads", lambda **kw: requests.append(kw["params"]))
    uploads = list_multipart_uploads(s3_client, location, page_size=10)
    # The paginator asks for pages of 10 (moto answers with all uploads in one page regardless).
    assert requests and all(r["MaxUploads"] == 10 for r in requests)
    assert {u.upload_id for u in uploads} == started and {u.key for u in uploads} == keys


def test_local_inventory_lists_only_files_of_the_directory(tmp_path: Path):
    (tmp_path / NAME.filename).write_bytes(b"abc")
    (tmp_path / "safety").mkdir()
    (tmp_path / "safety" / NAME.filename).write_bytes(b"abcdef")
    listed = list_local_files(BackupLocation(tmp_path))
    assert [(f.name, f.size) for f in listed] == [(NAME.filename, 3)]
    with pytest.raises(FileNotFoundError, match="LOYALTY_BACKUP_DIR"):
        list_local_files(BackupLocation(tmp_path / "missing"))

"""The shared resources hand out one BackupLocation: the directory and bucket carried together, the upload
settings refused (as a Dagster failure naming the variable) before anything is written."""

from pathlib import Path

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage


def offsite(**fields) -> OffsiteStorage:
    return OffsiteStorage(s3=S3Resource(region_name="us-east-1"), **fields)


def test_the_location_carries_the_resolved_directory_and_the_normalised_prefix(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    location = BackupStorage(backup_dir="dumps").location(offsite(bucket="loyalty-backups", prefix="/nightly/db"))
    assert location.backup_dir == tmp_path / "dumps"
    assert (location.bucket, location.prefix) == ("loyalty-backups", "nightly/db/")
    assert location.offsite_configured and location.prefix_uri == "s3://loyalty-backups/nightly/db/"


def test_without_a_bucket_the_location_is_this_machine_only(tmp_path: Path):
    storage = BackupStorage(backup_dir=str(tmp_path))
    for location in (storage.location(), storage.location(offsite()), storage.location(offsite(sse="rot13"))):
        assert location.backup_dir == tmp_path and not location.offsite_configured
        assert location.describe() == str(tmp_path)


def test_bad_upload_settings_fail_naming_the_variable(tmp_path: Path):
    storage = BackupStorage(backup_dir=str(tmp_path))
    with pytest.raises(dg.Failure, match=r"offsite settings are invalid: LOYALTY_S3_SSE must be one of .* got 'rot13'"):
        storage.location(offsite(bucket="b", sse="rot13"))
    with pytest.raises(dg.Failure, match="LOYALTY_S3_STORAGE_CLASS=STANDARD_IA"):
        storage.location(offsite(bucket="b", storage_class="CHEAP"))

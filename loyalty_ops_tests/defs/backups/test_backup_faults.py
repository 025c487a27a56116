"""Each blocking check fails on the fault it guards against, and that failure blocks the offsite copy."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops_tests.conftest import postgres_target
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata

ALL = [database_backup, offsite_backup_copy, *BACKUP_CHECKS]
CHECKS_ONLY = dg.AssetSelection.checks_for_assets(database_backup)
UPLOAD_ONLY = dg.AssetSelection.assets(offsite_backup_copy)


def backup_only(resources, instance) -> Path:
    result = dg.materialize(
        ALL, selection=dg.AssetSelection.assets(database_backup).without_checks(), resources=resources, instance=instance
    )
    assert result.success
    return Path(materialization_metadata(result, "database_backup")["path"])


def checks_then_upload(resources, instance) -> tuple[dict[str, bool], dg.ExecuteInProcessResult]:
    """Run the checks on the file as it is on disk now, then (in a later run) the offsite copy."""
    checks = dg.materialize(ALL, selection=CHECKS_ONLY, resources=resources, instance=instance, raise_on_error=False)
    upload = dg.materialize(ALL, selection=UPLOAD_ONLY, resources=resources, instance=instance, raise_on_error=False)
    return check_evaluations(checks), upload


def uploaded_keys(s3_client, bucket) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "fault, failing_checks",
    [
        (truncate, {"backup_archive_decompresses", "backup_checksum_matches", "backup_size_plausible"}),
        (flip_byte, {"backup_archive_decompresses", "backup_checksum_matches"}),
        (empty, {"backup_archive_decompresses", "backup_checksum_matches", "backup_size_plausible",
                 "backup_toc_lists_all_tables"}),
    ],
    ids=["truncated", "flipped-byte", "empty"],
)
def test_fault_fails_its_check_and_blocks_upload(ops_resources, dagster_instance, s3_client, s3_bucket, fault, failing_checks):
    # A previous good backup, so the size check has something to compare with.
    backup_only(ops_resources, dagster_instance)
    baseline_checks, baseline_upload = checks_then_upload(ops_resources, dagster_instance)
    assert all(baseline_checks.values()) and baseline_upload.success
    s3_client.delete_objects(Bucket=s3_bucket, Delete={"Objects": [{"Key": k} for k in uploaded_keys(s3_client, s3_bucket)]})

    path = backup_only(ops_resources, dagster_instance)
    fault(path)
    evaluations, upload = checks_then_upload(ops_resources, dagster_instance)
    failed = {name for name, passed in evaluations.items() if not passed}
    assert failing_checks <= failed, evaluations
    assert not upload.success
    assert not [m for m in upload.get_asset_materialization_events() if m.asset_key == dg.AssetKey("offsite_backup_copy")]
    assert uploaded_keys(s3_client, s3_bucket) == []
    # The parts streamed during the dump were discarded when the checks failed.
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_missing_table_in_archive_fails_toc_check(ops_resources, dagster_instance, backup_dir):
    path = backup_only(ops_resources, dagster_instance)
    manifest = Path(str(path) + ".manifest.json")
    manifest.write_text(manifest.read_text().replace('"name": "tenants"', '"name": "tenants_gone"'))
    evaluations, upload = checks_then_upload(ops_resources, dagster_instance)
    assert evaluations["backup_toc_lists_all_tables"] is False
    assert evaluations["backup_checksum_matches"] is True
    assert not upload.success


def test_backup_shrunk_below_half_of_previous_blocks_upload(
    pg_cluster, make_database, dagster_instance, backup_dir, ops_resources, s3_client, s3_bucket
):
    db = make_database("shrink", sample_scale=0.3)
    resources = {**ops_resources, "postgres": postgres_target(pg_cluster, db)}
    first = dg.materialize(ALL, resources=resources, instance=dagster_instance)
    assert first.success
    with pg_cluster.connect(db) as conn:
        conn.execute("TRUNCATE events, redemptions")
    second = dg.materialize(ALL, resources=resources, instance=dagster_instance, raise_on_error=False)
    assert not second.success
    assert check_evaluations(second)["backup_size_plausible"] is False
    offsite = [m for m in second.get_asset_materialization_events() if m.asset_key == dg.AssetKey("offsite_backup_copy")]
    assert offsite == []
    assert len([k for k in uploaded_keys(s3_client, s3_bucket) if k.endswith(".dump.gz")]) == 1
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []

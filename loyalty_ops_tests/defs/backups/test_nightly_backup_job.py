"""The nightly backup job end to end on the real cluster and S3 endpoint."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path


from loyalty_ops.definitions import defs
from loyalty_ops.defs.backups.history import INTEGRITY_CHECK_NAMES
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata, schema_dump, table_fingerprints


def run_backup_job(resources, instance, *, selection=None, raise_on_error=False, run_config=None):
    job = defs.resolve_job_def("nightly_backup_job")
    return job.execute_in_process(
        resources=resources, instance=instance, raise_on_error=raise_on_error, run_config=run_config or {}
    )


def test_backup_job_writes_verified_file_and_verified_s3_copy(ops_resources, dagster_instance, backup_dir, s3_client, s3_bucket):
    result = run_backup_job(ops_resources, dagster_instance, raise_on_error=True)
    assert result.success
    meta = materialization_metadata(result, "database_backup")
    path = Path(meta["path"])
    assert path.parent == backup_dir
    assert path.name.startswith("loyalty_") and path.name.endswith(".dump.gz")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert subprocess.run(["gunzip", "-t", str(path)]).returncode == 0
    assert subprocess.run(["sha256sum", "-c", path.name + ".sha256"], cwd=backup_dir, capture_output=True).returncode == 0
    assert isinstance(meta["bytes"], int) and meta["bytes"] == path.stat().st_size
    assert isinstance(meta["duration_s"], float)
    assert meta["table_count"] == 5
    assert meta["row_counts"]["public.events"] > 0
    assert meta["server_version"].startswith("15.")
    assert "PostgreSQL" in meta["pg_dump_version"]
    # Not compressed twice: the gzip payload is an uncompressed custom-format archive (-Z0 leaves COPY text readable).
    with gzip.open(path, "rb") as fh:
        head = fh.read(2 * 1024 * 1024)
    assert head.startswith(b"PGDMP")
    evaluations = check_evaluations(result)
    assert {name: evaluations.get(name) for name in INTEGRITY_CHECK_NAMES} == {
        "backup_archive_decompresses": True,
        "backup_archive_complete": True,
        "backup_checksum_matches": True,
        "backup_toc_lists_all_tables": True,
        "backup_size_plausible": True,
    }
    offsite = materialization_metadata(result, "offsite_backup_copy")
    assert offsite["verified"] is True
    assert offsite["streamed"] is True  # parts went up during the dump; completed after the checks
    key = offsite["key"]
    assert key.startswith("backups/") and key.endswith(path.name)
    assert key.split("/")[1:4] == [path.name[8:12], path.name[12:14], path.name[14:16]]
    head_obj = s3_client.head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
    assert head_obj["ContentLength"] == path.stat().st_size
    assert head_obj["ServerSideEncryption"] == "AES256"
    assert head_obj["ChecksumSHA256"]
    sidecar = s3_client.get_object(Bucket=s3_bucket, Key=key + ".sha256")["Body"].read().decode()
    assert sidecar.split()[0] == meta["sha256"]


def test_round_trip_restores_equal_database(ops_resources, dagster_instance, pg_cluster, loyalty_db, make_database):
    result = run_backup_job(ops_resources, dagster_instance, raise_on_error=True)
    path = Path(materialization_metadata(result, "database_backup")["path"])
    target = make_database("restored", sample_scale=None)
    env = {"PATH": "/usr/bin:/bin", **pg_cluster.env(target)}
    # The guide's way: gunzip -c FILE | pg_restore -d NEWDB
    pipeline = subprocess.run(
        f"gunzip -c '{path}' | {pg_cluster.bin_dir}/pg_restore --exit-on-error --no-owner -d \"$PGDATABASE\"",
        shell=True, env=env, capture_output=True, text=True,
    )
    assert pipeline.returncode == 0, pipeline.stderr
    assert schema_dump(pg_cluster, target) == schema_dump(pg_cluster, loyalty_db)
    assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, loyalty_db)


def test_upload_after_checks_when_streaming_is_off(ops_resources, dagster_instance, backup_dir, s3_client, s3_bucket):
    result = run_backup_job(
        ops_resources, dagster_instance, raise_on_error=True,
        run_config={"ops": {"database_backup": {"config": {"stream_upload": False}}}},
    )
    meta = materialization_metadata(result, "database_backup")
    offsite = materialization_metadata(result, "offsite_backup_copy")
    assert offsite["streamed"] is False and offsite["verified"] is True
    head_obj = s3_client.head_object(Bucket=s3_bucket, Key=offsite["key"])
    assert head_obj["Metadata"]["sha256"] == meta["sha256"]
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []

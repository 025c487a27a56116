"""Which backup `latest` restores, with real backups taken by the real backup assets and checks:
the newest that passed its checks, the S3 copy of a damaged file, and stray names left alone."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.backups.history import INTEGRITY_CHECK_NAMES
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.lib.backup.naming import parse_backup_name
from loyalty_ops_tests.conftest import postgres_target
from loyalty_ops_tests.defs.restore.conftest import databases, failure_message, materialize_drill, run_restore
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata, table_fingerprints

BACKUP = [database_backup, offsite_backup_copy, *BACKUP_CHECKS]


def run_logs(instance, result) -> list[str]:
    return [e.message for e in instance.all_logs(result.run_id) if e.message]


def next_second() -> None:
    """Backup names have one-second resolution: start the next backup in a new second."""
    start = datetime.now(timezone.utc).replace(microsecond=0)
    while datetime.now(timezone.utc).replace(microsecond=0) == start:
        time.sleep(0.05)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_latest_skips_last_nights_failed_backup_and_says_why(
    pg_cluster, make_database, dagster_instance, restore_resources, backup_dir
):
    source = make_database("shrinks", sample_scale=0.3)
    resources = {**restore_resources, "postgres": postgres_target(pg_cluster, source)}
    good = dg.materialize(BACKUP, resources=resources, instance=dagster_instance)
    assert good.success
    good_file = materialization_metadata(good, "database_backup")["filename"]
    fingerprint = table_fingerprints(pg_cluster, source)

    # Last night: most rows gone, the backup fails its size check, and its file is the newest on disk.
    with pg_cluster.connect(source) as conn:
        conn.execute("TRUNCATE events, redemptions")
    next_second()
    bad = dg.materialize(BACKUP, resources=resources, instance=dagster_instance, raise_on_error=False)
    assert not bad.success and check_evaluations(bad)["backup_size_plausible"] is False
    bad_file = materialization_metadata(bad, "database_backup")["filename"]
    assert (backup_dir / bad_file).exists()
    assert parse_backup_name(bad_file) > parse_backup_name(good_file)

    target = f"{source}_latest"
    try:
        result = run_restore(resources, dagster_instance, target_database=target)
        assert result.success, failure_message(result)
        out = result.output_for_node("restore_database")
        assert out["backup_filename"] == good_file
        assert table_fingerprints(pg_cluster, target) == fingerprint  # the data from before the purge
        logs = run_logs(dagster_instance, result)
        assert any(f"latest: skipping {bad_file}: its integrity check backup_size_plausible failed" in m for m in logs), logs
        passed = f"latest is {good_file}: it passed its {len(INTEGRITY_CHECK_NAMES)} integrity checks"
        assert any(passed in m for m in logs), logs
        skipped = materialization_metadata_of_op(result)["skipped_backups"]
        assert len(skipped) == 1 and skipped[0].startswith(f"{bad_file}: ")
    finally:
        pg_cluster.drop_database(target)


def materialization_metadata_of_op(result: dg.ExecuteInProcessResult) -> dict:
    events = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    return {k: getattr(v, "value", v) for k, v in events[-1].step_output_data.metadata.items()}


def test_a_damaged_local_file_is_restored_from_its_intact_s3_copy(
    pg_cluster, loyalty_db, dagster_instance, restore_resources, backup_dir, s3_client, s3_bucket
):
    good = dg.materialize(BACKUP, resources=restore_resources, instance=dagster_instance)
    assert good.success
    meta = materialization_metadata(good, "database_backup")
    key = parse_backup_name(meta["filename"]).s3_key("backups/")
    assert s3_client.head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == meta["bytes"]
    local = backup_dir / meta["filename"]
    flip_byte(local)  # damaged on disk after the checks passed

    target = "restored_from_intact_copy"
    try:
        result = run_restore(restore_resources, dagster_instance, target_database=target)
        assert result.success, failure_message(result)
        out = result.output_for_node("restore_database")
        assert out["backup_filename"] == meta["filename"] and out["downloaded_from_s3"] is True
        assert out["backup_location"] == f"s3://{s3_bucket}/{key}" and out["sha256"] == meta["sha256"]
        assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, loyalty_db)
        logs = run_logs(dagster_instance, result)
        assert any(
            f"the local copy {local} is damaged" in m and "hashes to" in m and f"restored from the S3 copy s3://{s3_bucket}/{key}" in m
            for m in logs
        ), logs
        how = materialization_metadata_of_op(result)["how_chosen"]
        assert "is damaged" in how and "S3 copy" in how
    finally:
        pg_cluster.drop_database(target)

    # Named explicitly, the same file takes the same way out; with the S3 copy damaged too, both are named.
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"not the backup")
    before = databases(pg_cluster)
    refused = run_restore(restore_resources, dagster_instance, backup=meta["filename"], target_database="never_created")
    assert not refused.success
    message = failure_message(refused)
    assert f"no intact copy of {meta['filename']}" in message and f"the local copy {local}" in message
    assert f"the S3 copy s3://{s3_bucket}/{key}" in message and "Nothing was changed" in message
    assert databases(pg_cluster) == before


def test_without_history_latest_is_the_newest_backup_whose_file_verifies(
    pg_cluster, loyalty_db, dagster_instance, restore_resources, local_backup, backup_dir
):
    # A new ops box: no Dagster history. The newest file lacks its manifest; the next one's hash is wrong.
    stamp = parse_backup_name(local_backup.name).taken_at
    no_manifest = backup_dir / f"loyalty_{stamp.year + 1}0101_000000.dump.gz"
    shutil.copy2(local_backup, no_manifest)
    digest = hashlib.sha256(no_manifest.read_bytes()).hexdigest()
    Path(str(no_manifest) + ".sha256").write_text(f"{digest}  {no_manifest.name}\n")
    wrong_hash = backup_dir / f"loyalty_{stamp.year}1231_235959.dump.gz"
    if wrong_hash.name > local_backup.name:
        for suffix in ("", ".sha256", ".manifest.json"):
            shutil.copy2(str(local_backup) + suffix, str(wrong_hash) + suffix)
        flip_byte(wrong_hash)
    target = "restored_no_history"
    try:
        result = run_restore(restore_resources, dagster_instance, target_database=target)
        assert result.success, failure_message(result)
        assert result.output_for_node("restore_database")["backup_filename"] == local_backup.name
        logs = run_logs(dagster_instance, result)
        assert any("has no backup history" in m and "whose file verifies" in m for m in logs), logs
        assert any(f"latest: skipping {no_manifest.name}:" in m and "has no manifest" in m for m in logs), logs
        if wrong_hash.exists():
            assert any(f"latest: skipping {wrong_hash.name}:" in m and "hashes to" in m for m in logs), logs
        assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, loyalty_db)
    finally:
        pg_cluster.drop_database(target)


def test_stray_names_in_the_backup_dir_and_under_the_prefix_are_left_alone(
    pg_cluster, loyalty_db, dagster_instance, restore_resources, local_backup, backup_dir, s3_client, s3_bucket
):
    # Month 13, locally and on S3; a well-formed newer name in the wrong place on S3; a key outside the prefix.
    stray = "loyalty_20251301_000000.dump.gz"
    for suffix in ("", ".sha256"):
        shutil.copy2(str(local_backup) + suffix, backup_dir / (stray + suffix))
    for key in (
        f"backups/2025/13/01/{stray}",
        "backups/loyalty_20991231_000000.dump.gz",
        "backups/2099/12/30/loyalty_20991231_000000.dump.gz",
        "elsewhere/2099/12/31/loyalty_20991231_000000.dump.gz",
    ):
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"not a backup")
        s3_client.put_object(Bucket=s3_bucket, Key=key + ".sha256", Body=b"0" * 64)
    target = "restored_past_strays"
    try:
        result = run_restore(restore_resources, dagster_instance, target_database=target)
        assert result.success, failure_message(result)
        out = result.output_for_node("restore_database")
        assert out["backup_filename"] == local_backup.name and out["downloaded_from_s3"] is False
        assert materialization_metadata_of_op(result)["skipped_backups"] == []  # never even considered
    finally:
        pg_cluster.drop_database(target)
    # The drill (with no backup history to name the file) drills the real newest backup, past the strays.
    drill = materialize_drill(restore_resources, dagster_instance)
    assert drill.success
    assert materialization_metadata(drill, "restore_drill")["backup_filename"] == local_backup.name
    assert (backup_dir / stray).exists()  # left alone, not deleted


def test_latest_skips_a_backup_whose_drill_failed(pg_cluster, loyalty_db, dagster_instance, restore_resources, backup_dir):
    older = dg.materialize(BACKUP, resources=restore_resources, instance=dagster_instance)
    assert older.success
    older_file = materialization_metadata(older, "database_backup")["filename"]
    next_second()
    newer = dg.materialize(BACKUP, resources=restore_resources, instance=dagster_instance)
    assert newer.success
    newer_file = materialization_metadata(newer, "database_backup")["filename"]
    # The newer backup passed its checks, but its drill fails: its manifest no longer matches what it restores.
    manifest_file = backup_dir / (newer_file + ".manifest.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["row_counts"]["public.redemptions"] += 1
    manifest_file.write_text(json.dumps(manifest))
    drill = materialize_drill(restore_resources, dagster_instance)
    assert not drill.success and materialization_metadata(drill, "restore_drill")["backup_filename"] == newer_file

    target = "restored_past_failed_drill"
    try:
        result = run_restore(restore_resources, dagster_instance, target_database=target)
        assert result.success, failure_message(result)
        assert result.output_for_node("restore_database")["backup_filename"] == older_file
        logs = run_logs(dagster_instance, result)
        assert any(
            f"latest: skipping {newer_file}: its restore drill failed" in m and "public.redemptions" in m for m in logs
        ), logs
        assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, loyalty_db)
    finally:
        pg_cluster.drop_database(target)

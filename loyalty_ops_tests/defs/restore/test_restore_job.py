"""restore_job on the real cluster and S3 endpoint: round trips, replace with a safety backup, refusals."""

from __future__ import annotations

import json
import os

from loyalty_ops.lib.backup.naming import parse_backup_name
from loyalty_ops_tests.defs.restore.conftest import databases, failure_message, run_restore
from loyalty_ops_tests.helpers import schema_dump, table_fingerprints


def test_round_trip_from_s3_key_equals_source(
    restore_resources, dagster_instance, pg_cluster, loyalty_db, local_backup, s3_client, s3_bucket, backup_dir
):
    key = parse_backup_name(local_backup.name).s3_key("backups/")
    for suffix in ("", ".sha256", ".manifest.json"):
        s3_client.upload_file(str(local_backup) + suffix, s3_bucket, key + suffix)
        os.unlink(str(local_backup) + suffix)  # only on S3 now
    target = "restored_from_s3"
    try:
        result = run_restore(restore_resources, dagster_instance, backup=key, target_database=target, jobs=2)
        assert result.success, failure_message(result)
        out = result.output_for_node("restore_database")
        assert out["downloaded_from_s3"] is True and out["backup_filename"] == local_backup.name
        assert out["rows_verified"] > 0 and isinstance(out["rto_s"], float)
        assert schema_dump(pg_cluster, target) == schema_dump(pg_cluster, loyalty_db)
        assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, loyalty_db)
        # The download and the decompressed archive are gone.
        assert [p.name for p in backup_dir.iterdir()] == []
        logs = [e.message for e in dagster_instance.all_logs(result.run_id) if e.message]
        assert any("pg_restore -j 2 --exit-on-error" in m for m in logs)
        assert any(m.startswith("download: ") and "(100%)" in m for m in logs)  # progress: bytes, percent, ETA
        assert any(m.startswith("verify + decompress: ") and "(100%)" in m for m in logs)
        assert not any(pg_cluster.password in m for m in logs)
    finally:
        pg_cluster.drop_database(target)


def test_latest_into_new_database_with_default_name(restore_resources, dagster_instance, pg_cluster, loyalty_db, local_backup):
    before = databases(pg_cluster)
    result = run_restore(restore_resources, dagster_instance)  # all defaults: latest, new database
    assert result.success, failure_message(result)
    out = result.output_for_node("restore_database")
    try:
        assert out["target_database"].startswith("loyalty_restored_") and out["target_database"] not in before
        assert out["backup_filename"] == local_backup.name and out["downloaded_from_s3"] is False
        assert table_fingerprints(pg_cluster, out["target_database"]) == table_fingerprints(pg_cluster, loyalty_db)
    finally:
        pg_cluster.drop_database(out["target_database"])


def test_replace_restores_target_and_keeps_safety_backup(
    restore_resources, dagster_instance, pg_cluster, loyalty_db, local_backup, make_database, backup_dir
):
    target = make_database("victim", sample_scale=None)
    with pg_cluster.connect(target) as conn:
        conn.execute("CREATE TABLE only_in_victim (id int); INSERT INTO only_in_victim VALUES (1), (2)")
    holder = pg_cluster.connect(target)  # another session that must be terminated
    try:
        result = run_restore(
            restore_resources, dagster_instance, backup=local_backup.name, target_database=target, mode="replace",
            confirm=target, jobs=2,
        )
        assert result.success, failure_message(result)
        out = result.output_for_node("restore_database")
        assert out["terminated_connections"] >= 1
        assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, loyalty_db)
        assert schema_dump(pg_cluster, target) == schema_dump(pg_cluster, loyalty_db)
        safety_dir = backup_dir / "safety"  # apart from the nightly backups: never `latest`, never retained away
        safety = safety_dir / os.path.basename(out["safety_backup"])
        assert safety.exists() and safety.name.startswith(f"{target}_")
        assert (safety_dir / (safety.name + ".sha256")).exists() and (safety_dir / (safety.name + ".manifest.json")).exists()
        # No side or retired database is left behind.
        assert not [d for d in databases(pg_cluster) if d.startswith(f"{target}_")]
        # The safety backup holds the replaced data (its manifest counted the table that is now gone).
        manifest = json.loads((safety_dir / (safety.name + ".manifest.json")).read_text())
        assert manifest["database"] == target and manifest["row_counts"] == {"public.only_in_victim": 2}
        with pg_cluster.connect(target) as conn:
            assert conn.execute("SELECT to_regclass('public.only_in_victim')").fetchone()[0] is None
    finally:
        holder.close()


def test_corrupted_file_is_refused_on_its_checksum(restore_resources, dagster_instance, pg_cluster, local_backup, backup_dir):
    data = bytearray(local_backup.read_bytes())
    data[len(data) // 2] ^= 0xFF
    local_backup.write_bytes(bytes(data))
    before = databases(pg_cluster)
    result = run_restore(restore_resources, dagster_instance, backup=local_backup.name, target_database="never_created")
    assert not result.success
    message = failure_message(result)
    assert "verify checksum" in message and "SHA-256" in message and "Nothing was changed" in message
    assert databases(pg_cluster) == before
    assert sorted(p.name for p in backup_dir.iterdir() if p.name.startswith(".")) == []  # no temp files left


# Each mistake is refused with a message naming it, and nothing changes: no database created or dropped,
# the existing database's data intact, no safety backup or temporary file written. (The pure validation of
# every field is covered in loyalty_ops_tests/lib/restore; these go through the job end to end.)
REFUSALS = [
    (dict(mode="replace", target_database="{existing}"), "set confirm to"),
    (dict(mode="replace", target_database="{existing}", confirm="loyalty"), "does not equal target_database"),
    (dict(mode="merge", target_database="x_new"), "mode must be one of"),
    (dict(backup="loyalty_20200101_000000.dump.gz", target_database="x_new"), "not found"),
    (dict(target_database="{existing}"), "already exists and mode is new_database"),
    (dict(mode="replace", target_database="missing_db", confirm="missing_db"), "does not exist"),
]


def test_config_mistakes_are_refused_before_anything_changes(
    restore_resources, dagster_instance, pg_cluster, local_backup, make_database, backup_dir
):
    existing = make_database("keep", sample_scale=None)
    with pg_cluster.connect(existing) as conn:
        conn.execute("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1), (2), (3)")
    fingerprint = table_fingerprints(pg_cluster, existing)
    before = databases(pg_cluster)
    files_before = sorted(p.name for p in backup_dir.iterdir())
    for config, expected in REFUSALS:
        config = {k: v.format(existing=existing) if isinstance(v, str) else v for k, v in config.items()}
        config.setdefault("backup", local_backup.name)
        result = run_restore(restore_resources, dagster_instance, **config)
        assert not result.success, config
        message = failure_message(result)
        assert expected in message and "refused" in message, (config, message)
        assert databases(pg_cluster) == before, config
        assert table_fingerprints(pg_cluster, existing) == fingerprint, config
        assert sorted(p.name for p in backup_dir.iterdir()) == files_before, config  # no safety backup, no temp file

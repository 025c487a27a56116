"""Client-side encryption (age): the backup and its globals leave the dump already encrypted to the
recipients; the stored object holds no plaintext; the stock `age -d | gunzip | pg_restore` restores it; the
checks that need plaintext are done in the backup pass when the key is not on the machine (and on the file
itself when it is); the drill passes with the key and refuses, naming the setting, without it."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.defs.resources import BackupStorage
from loyalty_ops.defs.restore.drill import restore_drill, restore_drill_matches_source
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.lib.backup.encryption import AGE_MAGIC
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata, table_fingerprints

KNOWN_ROW = b"member17@example.co.zw"  # a members row of the sample database
NIGHTLY = [database_backup, *BACKUP_CHECKS, offsite_backup_copy, restore_drill, restore_drill_matches_source]


@pytest.fixture(scope="module")
def age_key(tmp_path_factory) -> tuple[Path, str]:
    """A key made by the stock CLI: the private key file and its public key (the recipient)."""
    key = tmp_path_factory.mktemp("age") / "backup-key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    return key, public


def _nightly(ops_resources, instance, assets=NIGHTLY, **storage):
    resources = {
        **ops_resources,
        "backup_storage": BackupStorage(backup_dir=ops_resources["backup_storage"].backup_dir, encryption="age", **storage),
        "restore_settings": RestoreSettings(),
    }
    return dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)


def test_an_encrypted_backup_is_unreadable_without_the_key_and_restores_with_stock_tools(
    ops_resources, age_key, dagster_instance, s3_client, s3_bucket, pg_cluster, loyalty_db, make_database, tmp_path
):
    key, public = age_key
    # The backup box holds only the public key: the plaintext checks run in the backup pass.
    result = _nightly(ops_resources, dagster_instance, age_recipients=public)
    backup = materialization_metadata(result, "database_backup")
    assert backup["filename"].endswith(".dump.gz.age") and backup["encrypted"] is True
    assert backup["globals_filename"].endswith(".globals.sql.gz.age")
    checks = check_evaluations(result)
    assert all(checks[name] for name in (
        "backup_archive_decompresses", "backup_archive_complete", "backup_checksum_matches",
        "backup_toc_lists_all_tables", "backup_size_plausible")), checks
    assert backup["in_pass_checks"]["archive_complete"] is True and backup["in_pass_checks"]["data_blocks"] > 0
    assert materialization_metadata(result, "offsite_backup_copy")["verified"] is True
    # Without the key the drill refuses and says which setting is missing.
    drill = materialization_metadata(result, "restore_drill")
    assert drill["passed"] is False and drill["failed_step"] == "decrypt"
    assert "LOYALTY_BACKUP_AGE_IDENTITY_FILE" in drill["message"] and checks["restore_drill_matches_source"] is False
    assert str(key) not in str(drill)

    # What S3 holds: an age file with no plaintext of a known row, not even a gzip stream.
    key_prefix = materialization_metadata(result, "offsite_backup_copy")["key"]
    stored = s3_client.get_object(Bucket=s3_bucket, Key=key_prefix)["Body"].read()
    assert stored.startswith(AGE_MAGIC) and KNOWN_ROW not in stored
    with pytest.raises(OSError):
        gzip.decompress(stored)
    globals_key = key_prefix.rsplit("/", 1)[0] + "/" + backup["globals_filename"]
    sealed_globals = s3_client.get_object(Bucket=s3_bucket, Key=globals_key)["Body"].read()
    assert sealed_globals.startswith(AGE_MAGIC) and b"CREATE ROLE" not in sealed_globals

    # The stock tools read it: age -d | gunzip | pg_restore, into a new database that equals the source.
    path = Path(backup["path"])
    restored = make_database("stock", sample_scale=None)
    env = {"PATH": "/usr/bin:/bin", **pg_cluster.env(restored)}
    pipeline = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f'age -d -i "$KEY" "$FILE" | gunzip | {pg_cluster.bin_dir}/pg_restore --no-owner -d "$PGDATABASE"'],
        env={**env, "KEY": str(key), "FILE": str(path)}, capture_output=True, text=True,
    )
    assert pipeline.returncode == 0, pipeline.stderr
    assert table_fingerprints(pg_cluster, restored) == table_fingerprints(pg_cluster, loyalty_db)
    plain_globals = subprocess.run(["age", "-d", "-i", str(key), str(path.with_name(backup["globals_filename"]))],
                                   check=True, capture_output=True).stdout
    assert b"CREATE ROLE" in gzip.decompress(plain_globals)

    # With the key: the checks decrypt the file on disk and read it whole; the drill passes.
    no_upload = [a for a in NIGHTLY if a is not offsite_backup_copy]  # the upload was proven above
    with_key = _nightly(ops_resources, dagster_instance, no_upload, age_recipients=public, age_identity_file=str(key))
    assert with_key.success, check_evaluations(with_key)
    assert all(check_evaluations(with_key).values())
    drill = materialization_metadata(with_key, "restore_drill")
    assert drill["passed"] is True and drill["backup_filename"].endswith(".dump.gz.age")


def test_a_replace_keeps_its_safety_backup_encrypted_and_the_undo_restores_it(
    ops_resources, age_key, dagster_instance, pg_cluster, loyalty_db, make_database
):
    from loyalty_ops.lib.backup.location import SAFETY_SUBDIR
    from loyalty_ops_tests.defs.restore.conftest import failure_message, run_restore

    key, public = age_key
    storage = BackupStorage(backup_dir=ops_resources["backup_storage"].backup_dir, encryption="age",
                            age_recipients=public, age_identity_file=str(key))
    resources = {**ops_resources, "backup_storage": storage, "restore_settings": RestoreSettings()}
    backup = materialization_metadata(dg.materialize([database_backup], resources=resources, instance=dagster_instance),
                                      "database_backup")
    target = make_database("replaced", sample_scale=None)
    secret = b"card 4111-1111-1111-1111 of the replaced database"
    with pg_cluster.connect(target) as conn:
        conn.execute("CREATE TABLE only_before (note text)")
        conn.execute("INSERT INTO only_before VALUES (%s)", (secret.decode(),))
    before = table_fingerprints(pg_cluster, target)

    replace = run_restore(resources, dagster_instance, backup=backup["filename"], target_database=target,
                          mode="replace", confirm=target)
    assert replace.success, failure_message(replace)
    assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, loyalty_db)
    # The copy of the replaced database left on disk is sealed like the nightly backups: no plaintext row in it.
    safety = Path(replace.output_for_node("restore_database")["safety_backup"])
    assert safety.parent.name == SAFETY_SUBDIR and safety.name.endswith(".dump.gz.age")
    sealed = safety.read_bytes()
    assert sealed.startswith(AGE_MAGIC) and secret not in sealed and b"only_before" not in sealed
    assert safety.with_name(safety.name.replace(".dump.gz.age", ".globals.sql.gz.age")).exists()

    # The documented undo decrypts it with the key and brings the replaced data back.
    undo = run_restore(resources, dagster_instance, backup=f"safety/{safety.name}", target_database=target,
                       mode="replace", confirm=target)
    assert undo.success, failure_message(undo)
    assert table_fingerprints(pg_cluster, target) == before

"""A restore never runs out of disk halfway: the space check refuses before anything is written, and a
``jobs: 1`` restore streams the verified archive into pg_restore without any temporary copy. Real parts: a
small tmpfs as the temporary directory, the real cluster, the real pg_restore."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.restore.pg_restore import run_pg_restore
from loyalty_ops.lib.restore.archive_passes import ArchiveChanged, stream_archive, verify_archive
from loyalty_ops_tests.defs.restore.conftest import databases, everything_under, failure_message, run_restore
from loyalty_ops_tests.helpers import table_fingerprints

MiB = 1024 * 1024


def test_a_temporary_directory_too_small_refuses_with_the_numbers_before_anything_is_written(
    restore_resources, dagster_instance, pg_cluster, local_backup, small_disk
):
    disk = small_disk(1 * MiB)  # the decompressed sample archive is about 2.6 MB
    resources = {**restore_resources, "restore_settings": RestoreSettings(tmp_dir=str(disk))}
    before = everything_under(local_backup.parent)
    result = run_restore(resources, dagster_instance, backup=local_backup.name, target_database="space_refused", jobs=2)
    assert not result.success
    message = failure_message(result)
    assert "refused at step 'check space'" in message and "Nothing was changed" in message, message
    assert f"{disk}: needs" in message and "decompressed archive" in message and "free" in message, message
    assert "LOYALTY_RESTORE_TMP_DIR" in message and "jobs: 1" in message
    assert "space_refused" not in databases(pg_cluster)
    assert everything_under(disk) == [] and everything_under(local_backup.parent) == before


def test_jobs_1_streams_the_archive_and_writes_no_temporary_file(
    restore_resources, dagster_instance, pg_cluster, loyalty_db, local_backup, small_disk
):
    """The same 1 MiB disk as every directory a restore may write temporary files to: only streaming fits."""
    disk = small_disk(1 * MiB)
    resources = {**restore_resources, "restore_settings": RestoreSettings(tmp_dir=str(disk), work_dir=str(disk))}
    before = everything_under(local_backup.parent)
    result = run_restore(resources, dagster_instance, backup=local_backup.name, target_database="streamed_copy", jobs=1)
    try:
        assert result.success, failure_message(result)
        meta = result.output_for_node("restore_database")
        assert meta["streamed"] is True and meta["pg_restore_jobs"] == 1
        assert table_fingerprints(pg_cluster, "streamed_copy") == table_fingerprints(pg_cluster, loyalty_db)
        assert everything_under(disk) == [] and everything_under(local_backup.parent) == before
        logs = " ".join(e.message for e in dagster_instance.all_logs(result.run_id) if e.message)
        assert "the whole archive read" in logs and "reading the archive from its standard input" in logs
        assert "space check: fits" in logs and "restored database needs" in logs
    finally:
        pg_cluster.drop_database("streamed_copy")


def _rewrite_sidecars(path):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (path.parent / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
    manifest_file = path.parent / (path.name + ".manifest.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["sha256"] = digest
    manifest_file.write_text(json.dumps(manifest))


def test_a_cut_archive_is_refused_by_the_first_pass_before_a_database_exists(
    restore_resources, dagster_instance, pg_cluster, local_backup
):
    """A valid gzip of an archive cut at two thirds: streamed restores read the whole archive first, so it is
    refused with nothing created (a jobs 2 restore finds out only when pg_restore fails)."""
    raw = gzip.decompress(local_backup.read_bytes())
    local_backup.write_bytes(gzip.compress(raw[: len(raw) * 2 // 3], compresslevel=1))
    _rewrite_sidecars(local_backup)
    result = run_restore(restore_resources, dagster_instance, backup=local_backup.name, target_database="cut_copy", jobs=1)
    message = failure_message(result)
    assert "refused at step 'verify archive'" in message and "not a complete pg_dump archive" in message, message
    assert "Nothing was changed" in message and "cut_copy" not in databases(pg_cluster)


def test_a_file_changed_after_its_verification_fails_the_streamed_restore(pg_cluster, make_database, source_backup, tmp_path):
    copy = tmp_path / source_backup.name
    copy.write_bytes(source_backup.read_bytes())
    archive = verify_archive(copy, hashlib.sha256(copy.read_bytes()).hexdigest())
    assert archive.streamed and archive.data_blocks > 0
    raw = gzip.decompress(copy.read_bytes())
    copy.write_bytes(gzip.compress(raw.replace(b"\tbronze\t", b"\tsilver\t"), compresslevel=1))  # same length, other bytes
    database = make_database("changed", sample_scale=None)
    spec = pg_cluster.spec(database)
    with pytest.raises(ArchiveChanged, match="changed while it was being restored"):
        run_pg_restore(
            HostToolRunner(spec), spec, None, database, jobs=1, feed=lambda write: stream_archive(archive, write)
        )


def test_without_a_manifest_the_archive_size_is_unknown_and_a_full_disk_still_refuses_cleanly(
    restore_resources, dagster_instance, pg_cluster, local_backup, small_disk
):
    (local_backup.parent / (local_backup.name + ".manifest.json")).unlink()  # an older backup: sidecar only
    disk = small_disk(1 * MiB)
    resources = {**restore_resources, "restore_settings": RestoreSettings(tmp_dir=str(disk))}
    result = run_restore(resources, dagster_instance, backup=local_backup.name, target_database="no_room", jobs=2)
    message = failure_message(result)
    assert "refused at step 'decompress'" in message and "No space left on device" in message, message
    assert "LOYALTY_RESTORE_TMP_DIR" in message and "Nothing was changed" in message
    logs = " ".join(e.message for e in dagster_instance.all_logs(result.run_id) if e.message)
    assert "not checked: decompressed archive" in logs and "no manifest" in logs
    assert "no_room" not in databases(pg_cluster) and everything_under(disk) == []

"""Runs that share a backup directory, and a directory that fills up: never a shared name, never a live
temp file deleted, never half a backup under a final name. On real parts: two backups at once, a second
PID namespace (``unshare``), a tmpfs that runs out of space, moto's S3 for the streamed upload."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest

from loyalty_ops.definitions import defs
from loyalty_ops.defs.resources import BackupStorage
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup import integrity
from loyalty_ops.lib.backup.dump import BackupRequest, take_backup
from loyalty_ops.lib.backup.manifest import read_manifest
from loyalty_ops.lib.backup.naming import parse_backup_name
from loyalty_ops.lib.backup.offsite import StreamingUpload, complete_pending_upload, streaming_part_bytes
from loyalty_ops.lib.backup.stream import remove_stale_partials
from loyalty_ops.lib.backup.tempfiles import LOCKED_SUFFIX
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops_tests.helpers import materialization_metadata

SAME_SECOND = datetime(2026, 3, 14, 1, 59, 26, tzinfo=timezone.utc)
REPO_ROOT = Path(__file__).resolve().parents[3]


def test_two_backups_in_the_same_second_get_their_own_names_files_and_s3_keys(
    pg_cluster, loyalty_db, backup_dir, s3_client, s3_bucket
):
    spec = pg_cluster.spec(loyalty_db)
    target = BackupLocation(backup_dir, s3_bucket, "backups/")
    start = threading.Barrier(2)
    uploads: dict[str, StreamingUpload] = {}
    results, errors, logged = [], [], []

    def open_sink(name, expected):
        upload = StreamingUpload(s3_client, target, target.key_for(name), streaming_part_bytes(expected))
        uploads[name.filename] = upload
        return upload.write

    def one_backup():
        try:
            start.wait()
            results.append(
                take_backup(spec, HostToolRunner(spec), BackupRequest(backup_dir), taken_at=SAME_SECOND,
                            open_sink=open_sink, log=logged.append)
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_backup) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    names = sorted(r.path.name for r in results)
    assert names == ["loyalty_20260314_015926.dump.gz", "loyalty_20260314_015927.dump.gz"]  # the next free second
    assert [m for m in logged if "is taken" in m] == [
        "loyalty_20260314_015926.dump.gz is taken (another backup in the same second); this backup is loyalty_20260314_015927.dump.gz"
    ]
    for result in results:
        path = result.path
        assert parse_backup_name(path.name) == result.name
        assert subprocess.run(["gunzip", "-t", str(path)]).returncode == 0
        assert integrity.file_sha256(path) == result.file.sha256 == integrity.read_sidecar(path)
        manifest = read_manifest(path)
        assert manifest is not None and manifest.filename == path.name and manifest.sha256 == result.file.sha256
        assert manifest.row_counts == result.row_counts and manifest.row_counts["public.events"] > 0
        # Each streamed upload went to the key of its own claimed name and holds its own file.
        pending = uploads[path.name].finish()
        assert pending is not None and pending.key == result.name.s3_key("backups/")
        complete_pending_upload(s3_client, pending, path, result.file.sha256)
        body = s3_client.get_object(Bucket=s3_bucket, Key=pending.key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == result.file.sha256
    assert sorted(p.name for p in backup_dir.iterdir()) == sorted(
        [f"{n}{suffix}" for n in names for suffix in ("", ".sha256", ".manifest.json")]
        + [n.replace(".dump.gz", ".globals.sql.gz") for n in names]  # each backup's own cluster globals
    )  # no claim or temporary file left behind


def test_a_backup_already_at_that_second_is_never_replaced(pg_cluster, loyalty_db, backup_dir):
    spec = pg_cluster.spec(loyalty_db)
    existing = backup_dir / "loyalty_20260314_015926.dump.gz"
    existing.write_bytes(b"an earlier run's backup")
    orphan_sidecar = backup_dir / "loyalty_20260314_015927.dump.gz.sha256"
    orphan_sidecar.write_text("left by someone\n")
    result = take_backup(spec, HostToolRunner(spec), BackupRequest(backup_dir), taken_at=SAME_SECOND)
    assert result.path.name == "loyalty_20260314_015928.dump.gz"
    assert existing.read_bytes() == b"an earlier run's backup"
    assert orphan_sidecar.read_text() == "left by someone\n"


HOLD_PARTIAL = """
import sys
from pathlib import Path
from loyalty_ops.lib.backup.stream import stream_to_file
# The real writer, fed by a stream that never ends: its temporary file stays live until this process dies.
stream_to_file(sys.stdin.buffer, Path(sys.argv[1]), chunk_bytes=4096)
"""


def test_cleanup_never_deletes_a_live_temp_file_of_another_pid_namespace(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root")
    backup_dir = tmp_path / "shared-volume"
    backup_dir.mkdir()
    final = backup_dir / "loyalty_20260314_015926.dump.gz"
    # Start a few processes first, so the writer's pid inside its namespace is not 1.
    other = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", 'true; true; true; exec "$0" -c "$1" "$2"',
         sys.executable, HOLD_PARTIAL, str(final)],
        stdin=subprocess.PIPE, cwd=REPO_ROOT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        other.stdin.write(os.urandom(256 * 1024))
        other.stdin.flush()
        deadline = time.monotonic() + 30
        while not (live := [p for p in backup_dir.iterdir() if p.name.endswith(LOCKED_SUFFIX)]):
            assert other.poll() is None and time.monotonic() < deadline, "the writer in the other namespace did not start"
            time.sleep(0.05)
        while live[0].stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert remove_stale_partials(backup_dir) == []
        assert live[0].exists() and live[0].stat().st_size > 0
    finally:
        os.killpg(other.pid, signal.SIGKILL)  # the unshare process and the writer: SIGKILL, no cleanup code runs
        other.wait(30)
    assert live[0].exists()  # a killed run leaves its temporary file behind ...
    deadline = time.monotonic() + 10
    removed = remove_stale_partials(backup_dir)
    while not removed and time.monotonic() < deadline:  # the kernel drops the lock as the process is reaped
        time.sleep(0.1)
        removed = remove_stale_partials(backup_dir)
    assert removed == [live[0]]  # ... and the next cleanup removes it
    assert list(backup_dir.iterdir()) == []


# tmpfs counts every name of a file against nr_inodes, so a file made by link (see tempfiles.create_locked)
# briefly needs two. Settled: root 1, claim 2, temporary data file 3, sidecar 4, globals file 5, manifest 6,
# the sidecar rewritten with the globals file's line 7.
@pytest.mark.parametrize(
    "size, inodes, failing_step",
    [
        # Too small for the dump itself.
        (64 * 1024, 1000, "writing the backup data"),
        # Room for the claim, none for the temporary data file.
        (64 * 1024 * 1024, 3, "creating the backup file"),
        # Room for the data, then none for the sidecar.
        (64 * 1024 * 1024, 4, "writing the checksum sidecar"),
        # Room for the data and its sidecar, then none for the cluster globals written beside it.
        (64 * 1024 * 1024, 5, "writing the cluster globals"),
        # The disk is full exactly at the manifest: the backup, its sidecar and globals fit, the manifest does not.
        (64 * 1024 * 1024, 6, "manifest.json"),
        # Everything but the sidecar's second line (the globals file's checksum).
        (64 * 1024 * 1024, 7, ".dump.gz.sha256"),
    ],
    ids=["during-the-dump", "at-the-temp-file", "at-the-sidecar", "at-the-globals", "at-the-manifest", "at-the-sidecar-rewrite"],
)
def test_a_full_disk_at_any_step_leaves_no_half_backup_and_no_upload(
    ops_resources, dagster_instance, small_disk, s3_client, s3_bucket, size, inodes, failing_step
):
    disk = small_disk(size, inodes)
    resources = {**ops_resources, "backup_storage": BackupStorage(backup_dir=str(disk))}
    result = defs.resolve_job_def("nightly_backup_job").execute_in_process(
        resources=resources, instance=dagster_instance, raise_on_error=False
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = " ".join(str(e.event_specific_data.error.message) for e in failures)
    assert failing_step in message and "No space left on device" in message, message
    assert "free space in LOYALTY_BACKUP_DIR" in message and "Nothing was left under the name loyalty_" in message
    assert list(disk.iterdir()) == []  # no backup, sidecar, manifest, claim or temporary file
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0


def test_accept_size_change_is_recorded_as_a_bool(ops_resources, dagster_instance):
    from loyalty_ops.defs.backups.assets import database_backup

    accepted = dg.materialize(
        [database_backup], resources=ops_resources, instance=dagster_instance,
        run_config={"ops": {"database_backup": {"config": {"accept_size_change": True, "stream_upload": False}}}},
    )
    plain = dg.materialize(
        [database_backup], resources=ops_resources, instance=dagster_instance,
        run_config={"ops": {"database_backup": {"config": {"stream_upload": False}}}},
    )
    assert materialization_metadata(accepted, "database_backup")["accept_size_change"] is True
    assert materialization_metadata(plain, "database_backup")["accept_size_change"] is False


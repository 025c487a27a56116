"""Finding a backup and preparing its archive: checksum first, corrupt and truncated streams, temp files."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest
import zstandard

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.restore.errors import BackupNotFound, ChecksumMismatch, RestoreRefused
from loyalty_ops.lib.restore.plan import BackupRef
from loyalty_ops.lib.restore.archive_passes import prepare_archive
from loyalty_ops.lib.restore.source import locate_backup

ARCHIVE = b"PGDMP" + os.urandom(64) + b"x" * 3_000_000


def write_backup(directory: Path, name: str, payload: bytes, *, sidecar: bool = True) -> Path:
    path = directory / name
    path.write_bytes(payload)
    if sidecar:
        (directory / (name + ".sha256")).write_text(f"{hashlib.sha256(payload).hexdigest()}  {name}\n")
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_prepare_archive_round_trip_private_file(tmp_path, compression):
    if compression == "gzip":
        payload = gzip.compress(ARCHIVE[:1_000_000], 1) + gzip.compress(ARCHIVE[1_000_000:], 1)  # two members
        name = "loyalty_20261127_020000.dump.gz"
    else:
        payload = zstandard.ZstdCompressor().compress(ARCHIVE)
        name = "loyalty_20261127_020000.dump.zst"
    path = write_backup(tmp_path, name, payload)
    prepared = prepare_archive(path, hashlib.sha256(payload).hexdigest(), tmp_path)
    assert prepared.path.read_bytes() == ARCHIVE and prepared.raw_bytes == len(ARCHIVE)
    assert (prepared.path.stat().st_mode & 0o777) == 0o600


def test_checksum_mismatch_is_reported_before_corruption(tmp_path):
    payload = bytearray(gzip.compress(ARCHIVE, 1))
    good = hashlib.sha256(payload).hexdigest()
    payload[len(payload) // 2] ^= 0xFF
    path = write_backup(tmp_path, "loyalty_20261127_020000.dump.gz", bytes(payload), sidecar=False)
    with pytest.raises(ChecksumMismatch, match="recorded SHA-256") as info:
        prepare_archive(path, good, tmp_path)
    assert info.value.step == "verify checksum" and "Nothing was changed" in str(info.value)
    assert leftovers(tmp_path) == []


def test_truncated_stream_with_matching_checksum_is_refused_at_decompress(tmp_path):
    payload = gzip.compress(ARCHIVE, 1)[:-5000]
    path = write_backup(tmp_path, "loyalty_20261127_020000.dump.gz", payload)
    with pytest.raises(RestoreRefused, match="truncated") as info:
        prepare_archive(path, hashlib.sha256(payload).hexdigest(), tmp_path)
    assert info.value.step == "decompress"
    assert leftovers(tmp_path) == []


def test_not_an_archive_is_refused(tmp_path):
    payload = gzip.compress(b"-- plain SQL\n" * 1000)
    path = write_backup(tmp_path, "loyalty_20261127_020000.dump.gz", payload)
    with pytest.raises(RestoreRefused, match="not a pg_dump custom-format archive"):
        prepare_archive(path, hashlib.sha256(payload).hexdigest(), tmp_path)


def test_locate_latest_and_by_name(tmp_path):
    write_backup(tmp_path, "loyalty_20261125_020000.dump.gz", b"a")
    write_backup(tmp_path, "loyalty_20261126_020000.dump.gz", b"b")
    write_backup(tmp_path, "other_20261127_020000.dump.gz", b"c")  # another database
    (tmp_path / ".loyalty_20261127_020000.dump.gz.partial-1").write_bytes(b"")
    latest = locate_backup(BackupRef("latest"), BackupLocation(tmp_path), database="loyalty")
    assert latest.filename == "loyalty_20261126_020000.dump.gz" and latest.checksum_sources == ["sidecar"]
    named = locate_backup(BackupRef("file", "loyalty_20261125_020000.dump.gz"), BackupLocation(tmp_path), database="loyalty")
    assert named.expected_sha256 == hashlib.sha256(b"a").hexdigest()
    with pytest.raises(BackupNotFound, match="not found"):
        locate_backup(BackupRef("file", "loyalty_20200101_000000.dump.gz"), BackupLocation(tmp_path))
    with pytest.raises(BackupNotFound, match="no backup of nobody"):
        locate_backup(BackupRef("latest"), BackupLocation(tmp_path), database="nobody")
    with pytest.raises(BackupNotFound, match="no offsite bucket"):
        locate_backup(BackupRef("s3_key", "backups/2026/11/27/loyalty_20261127_020000.dump.gz"), BackupLocation(tmp_path))


def test_backup_without_checksum_or_with_disagreeing_ones_is_refused(tmp_path):
    write_backup(tmp_path, "loyalty_20261125_020000.dump.gz", b"a", sidecar=False)
    with pytest.raises(ChecksumMismatch, match="no recorded SHA-256"):
        locate_backup(BackupRef("latest"), BackupLocation(tmp_path))
    (tmp_path / "loyalty_20261125_020000.dump.gz.sha256").write_text("0" * 64 + "  x\n")
    (tmp_path / "loyalty_20261125_020000.dump.gz.manifest.json").write_text(
        '{"database": "loyalty", "filename": "x", "taken_at": "", "compression": "gzip", "sha256": "' + "1" * 64
        + '", "bytes": 1, "raw_bytes": 1, "server_version": "15", "pg_dump_version": "15"}'
    )
    with pytest.raises(ChecksumMismatch, match="disagree"):
        locate_backup(BackupRef("latest"), BackupLocation(tmp_path))


def test_a_restore_work_file_is_never_cleaned_up_while_in_use_and_is_after_its_restore_is_killed(tmp_path):
    """Restore downloads and archives live under an flock: another run's cleanup (any process, any container
    sharing the directory) leaves them alone; once their restore is killed, the next cleanup removes them."""
    import signal
    import subprocess
    import sys
    import time

    from loyalty_ops.lib.backup.stream import remove_stale_partials
    from loyalty_ops.lib.restore.source import open_work_file, release_work_file

    cleanup = [sys.executable, "-c", "import sys; from loyalty_ops.lib.backup.stream import remove_stale_partials; "
               "print(len(remove_stale_partials(sys.argv[1])))", str(tmp_path)]
    mine, fd = open_work_file(tmp_path, "loyalty_20261201_020000.dump.gz", "archive")
    os.write(fd, b"archive bytes")
    os.close(fd)
    assert subprocess.run(cleanup, capture_output=True, text=True, check=True).stdout.strip() == "0"
    assert mine.read_bytes() == b"archive bytes" and (mine.stat().st_mode & 0o777) == 0o600
    release_work_file(mine)
    assert not mine.exists()

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from loyalty_ops.lib.restore.source import open_work_file; "
         "open_work_file(sys.argv[1], 'loyalty_20261201_020000.dump.gz', 'download'); print('held', flush=True); "
         "time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert remove_stale_partials(tmp_path) == [] and len(list(tmp_path.iterdir())) == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 5
        while list(tmp_path.iterdir()) and time.monotonic() < deadline:
            remove_stale_partials(tmp_path)
        assert list(tmp_path.iterdir()) == []
    finally:
        holder.kill()

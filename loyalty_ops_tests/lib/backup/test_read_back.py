"""The read-back of the backup file while it is written: it reads the file on disk (never the writer's memory),
waits for what the writer has not written yet, and its verdict is the stored file's."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from loyalty_ops.lib.backup.integrity import inspect_archive
from loyalty_ops.lib.backup.readback import FileBeingWritten
from loyalty_ops.lib.backup.stream import stream_to_file

ARCHIVE = b"PGDMP" + os.urandom(2 * 1024 * 1024)


def _drain(handle: FileBeingWritten, got: list[bytes]) -> threading.Thread:
    def run():
        while piece := handle.read(10):
            got.append(piece)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_it_reads_only_what_was_written_and_reads_it_from_the_file(tmp_path):
    path = tmp_path / "backup.partial"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"a" * 100)
    handle = FileBeingWritten(path)
    got: list[bytes] = []
    reader = _drain(handle, got)
    handle.advance(60)
    _wait_for(lambda: sum(map(len, got)) == 60)
    time.sleep(0.05)
    assert sum(map(len, got)) == 60  # the 40 bytes not yet reported as written are not read
    os.pwrite(fd, b"Z", 80)  # the file on disk changes before the reader gets there: it sees the change
    handle.advance(100)
    handle.close()
    reader.join(5)
    assert not reader.is_alive()
    assert b"".join(got) == b"a" * 80 + b"Z" + b"a" * 19
    os.close(fd)
    handle.release()


def test_cancel_ends_the_read_at_once(tmp_path):
    path = tmp_path / "backup.partial"
    path.write_bytes(b"b" * 100)
    handle = FileBeingWritten(path)
    got: list[bytes] = []
    reader = _drain(handle, got)
    time.sleep(0.02)
    handle.cancel()
    reader.join(5)
    assert not reader.is_alive() and got == []
    handle.release()


def _partial(directory: Path) -> Path:
    return next(p for p in directory.iterdir() if p.name.startswith(".") and not p.name.endswith(".sha256"))


def test_the_verdict_is_that_of_the_bytes_on_disk(tmp_path):
    """A byte damaged on disk after it was written (and before it was read back) fails the read-back's
    stream verdict and its hash differs from the one computed while writing."""
    final = tmp_path / "loyalty_20260101_000000.dump.gz"
    damaged = threading.Event()

    def damage_on_disk():
        partial = _partial(tmp_path)
        data = bytearray(partial.read_bytes())
        with open(partial, "r+b") as handle:
            handle.seek(len(data) // 2)
            handle.write(bytes([data[len(data) // 2] ^ 0xFF]))
        damaged.set()

    def read_back(handle):
        damaged.wait(10)
        return inspect_archive(final, None, source=handle, compression="gzip")

    written = stream_to_file(io.BytesIO(ARCHIVE), final, finish=damage_on_disk, read_back=read_back)
    checked = written.read_back
    assert checked.sha256 != written.sha256
    assert not checked.stream.ok and "corrupt" in checked.stream.message


def test_an_undamaged_file_reads_back_to_the_written_hash(tmp_path):
    final = tmp_path / "loyalty_20260101_000000.dump.zst"
    written = stream_to_file(
        io.BytesIO(ARCHIVE), final, compression="zstd", chunk_bytes=256 << 10,
        read_back=lambda handle: inspect_archive(final, None, source=handle, compression="zstd", read_bytes=4096),
    )
    checked = written.read_back
    assert checked.sha256 == written.sha256 and checked.file_bytes == written.written_bytes
    assert checked.stream.ok and checked.stream.raw_bytes == len(ARCHIVE)


def test_a_failing_producer_stops_the_read_back_and_leaves_nothing(tmp_path):
    final = tmp_path / "loyalty_20260101_000000.dump.gz"
    seen: list[object] = []

    def finish():
        raise RuntimeError("pg_dump failed with exit code 1")

    def read_back(handle):
        seen.append(inspect_archive(final, None, source=handle, compression="gzip"))

    with pytest.raises(RuntimeError, match="exit code 1"):
        stream_to_file(io.BytesIO(ARCHIVE), final, finish=finish, read_back=read_back)
    assert list(tmp_path.iterdir()) == []
    assert len(seen) == 1  # the read-back thread ended (cancelled), it did not hang


def test_the_flusher_flushes_beside_the_writer_and_reports_its_error_at_close(tmp_path):
    from loyalty_ops.lib.backup.stream import _Flusher

    path = tmp_path / "data"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    flusher = _Flusher(fd, every=1000)
    for done in range(1, 11):
        os.write(fd, b"x" * 1000)
        flusher.written(done * 1000)
    flusher.close()
    os.close(fd)
    assert path.read_bytes() == b"x" * 10_000 and not flusher._thread.is_alive()

    left, right = socket.socketpair()  # fdatasync of a socket fails (EINVAL): the writer hears of it at close
    failing = _Flusher(left.fileno(), every=1)
    failing.written(1)
    _wait_for(lambda: failing.error is not None)
    with pytest.raises(OSError):
        failing.close()
    left.close()
    right.close()

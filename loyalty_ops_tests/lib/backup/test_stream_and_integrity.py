"""The streaming writer and the integrity checks, on real files."""

import gzip
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loyalty_ops.lib.backup import integrity
from loyalty_ops.lib.backup.stream import remove_stale_partials, stream_to_file
from loyalty_ops.lib.backup.tempfiles import claim_path, create_locked, locked_partial_path
from loyalty_ops.lib.pg.catalog import TableRef
from loyalty_ops.lib.progress import ProgressMeter

ARCHIVE = b"PGDMP" + os.urandom(3 * 1024 * 1024) + b"tail" * 100_000


class FailingSource(io.RawIOBase):
    """A producer that dies after some bytes, like a pg_dump killed mid-way."""

    def __init__(self, good: bytes):
        self._good = io.BytesIO(good)

    def readable(self):
        return True

    def read(self, n=-1):
        data = self._good.read(n)
        if not data:
            raise OSError("producer died")
        return data


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_written_file_is_complete_private_and_matches_its_sidecar(tmp_path, compression):
    suffix = ".dump.gz" if compression == "gzip" else ".dump.zst"
    final = tmp_path / f"loyalty_20260101_000000{suffix}"
    written = stream_to_file(io.BytesIO(ARCHIVE), final, compression=compression, chunk_bytes=1 << 20)
    assert final.exists() and (final.stat().st_mode & 0o777) == 0o600
    assert written.raw_bytes == len(ARCHIVE) and written.written_bytes == final.stat().st_size
    assert integrity.file_sha256(final) == written.sha256 == integrity.read_sidecar(final)
    tool = ["gunzip", "-t"] if compression == "gzip" else ["zstd", "-q", "-t"]
    assert subprocess.run([*tool, str(final)]).returncode == 0
    assert subprocess.run(["sha256sum", "-c", final.name + ".sha256"], cwd=tmp_path, capture_output=True).returncode == 0
    assert integrity.verify_compressed_stream(final).ok
    assert b"".join(integrity.iter_decompressed(final)) == ARCHIVE
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_producer_leaves_nothing_behind(tmp_path):
    final = tmp_path / "loyalty_20260101_000000.dump.gz"
    with pytest.raises(Exception, match="producer died"):
        stream_to_file(FailingSource(ARCHIVE[:2_000_000]), final, chunk_bytes=1 << 20)
    assert list(tmp_path.iterdir()) == []


def test_failing_finish_hook_leaves_nothing_behind(tmp_path):
    final = tmp_path / "loyalty_20260101_000000.dump.gz"

    def finish():
        raise RuntimeError("pg_dump failed with exit code 1")

    with pytest.raises(RuntimeError, match="exit code 1"):
        stream_to_file(io.BytesIO(ARCHIVE), final, finish=finish)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_an_existing_backup(tmp_path):
    final = tmp_path / "loyalty_20260101_000000.dump.gz"
    final.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        stream_to_file(io.BytesIO(ARCHIVE), final)
    assert final.read_bytes() == b"precious"


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".loyalty_20260101_000000.dump.gz.partial-999999999"
    mine = tmp_path / f".loyalty_20260101_000000.dump.gz.partial-{os.getpid()}"
    other = tmp_path / "keep.txt"
    for p in (dead, mine, other):
        p.write_bytes(b"x")
    assert remove_stale_partials(tmp_path) == [dead]
    assert mine.exists() and other.exists() and not dead.exists()


def test_a_locked_temp_file_survives_cleanup_until_its_lock_is_released(tmp_path):
    final = tmp_path / "loyalty_20260101_000000.dump.gz"
    live = locked_partial_path(final)
    fd = create_locked(live)
    claim = claim_path(final)
    assert claim is not None and claim_path(final) is None  # a second run cannot claim the same name
    try:
        assert remove_stale_partials(tmp_path) == []
        assert live.exists() and claim.lock_path.exists()
    finally:
        os.close(fd)
        os.close(claim.fd)  # as if the run died: the lock goes, the files stay
    assert remove_stale_partials(tmp_path) == sorted([live, claim.lock_path])
    assert list(tmp_path.iterdir()) == []


KILLED_BEFORE_PUBLISH = """
import os, signal, sys
from pathlib import Path
from loyalty_ops.lib.backup.tempfiles import claim_path
final = Path(sys.argv[1])
claim = claim_path(final)
Path(f"{final}.sha256").write_text("sidecar")
Path(f"{final}.manifest.json").write_text("{}")
if sys.argv[2] == "published":
    final.write_bytes(b"complete backup")
os.kill(os.getpid(), signal.SIGKILL)  # killed holding the claim, no cleanup code runs
"""


def test_a_run_killed_before_publishing_leaves_nothing_after_the_next_cleanup(tmp_path):
    unpublished = tmp_path / "loyalty_20260101_000000.dump.gz"
    published = tmp_path / "loyalty_20260102_000000.dump.gz"
    repo = Path(__file__).resolve().parents[3]
    for final, state in ((unpublished, "unpublished"), (published, "published")):
        run = subprocess.run([sys.executable, "-c", KILLED_BEFORE_PUBLISH, str(final), state], cwd=repo,
                             env={**os.environ, "PYTHONPATH": str(repo)})
        assert run.returncode == -signal.SIGKILL
    assert claim_path(unpublished) is None  # the stale claim still blocks that name ...
    removed = remove_stale_partials(tmp_path)
    assert [p.name for p in removed] == [".loyalty_20260101_000000.dump.gz.claim", ".loyalty_20260102_000000.dump.gz.claim"]
    # ... the next cleanup removes it with the unpublished run's sidecar and manifest, and keeps a published backup whole.
    assert sorted(p.name for p in tmp_path.iterdir()) == [published.name, published.name + ".manifest.json", published.name + ".sha256"]


def test_companion_files_appear_before_the_backup_and_vanish_with_it(tmp_path):
    final = tmp_path / "loyalty_20260101_000000.dump.gz"
    manifest = tmp_path / "loyalty_20260101_000000.dump.gz.manifest.json"
    seen = []

    def companions(written):
        seen.append(sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")))
        return {manifest: f'{{"sha256": "{written.sha256}"}}'}

    written = stream_to_file(io.BytesIO(ARCHIVE), final, companions=companions)
    assert seen == [["loyalty_20260101_000000.dump.gz.sha256"]]  # sidecar first, backup not yet named
    assert written.sha256 in manifest.read_text() and final.exists()

    other = tmp_path / "loyalty_20260101_000001.dump.gz"

    def failing(_written):
        raise RuntimeError("row counts failed")

    with pytest.raises(RuntimeError, match="row counts failed"):
        stream_to_file(io.BytesIO(ARCHIVE), other, companions=failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, final.name + ".sha256", manifest.name])


@pytest.fixture
def good_gzip(tmp_path) -> Path:
    path = tmp_path / "loyalty_20260101_000000.dump.gz"
    stream_to_file(io.BytesIO(ARCHIVE), path)
    return path


def test_truncated_gzip_is_caught(good_gzip):
    data = good_gzip.read_bytes()
    good_gzip.write_bytes(data[: len(data) // 2])
    verdict = integrity.verify_compressed_stream(good_gzip)
    assert not verdict.ok and "truncated" in verdict.message
    assert subprocess.run(["gunzip", "-t", str(good_gzip)], capture_output=True).returncode != 0


def test_flipped_byte_is_caught_by_stream_and_checksum(good_gzip):
    expected = integrity.file_sha256(good_gzip)
    data = bytearray(good_gzip.read_bytes())
    data[len(data) // 2] ^= 0xFF
    good_gzip.write_bytes(bytes(data))
    assert not integrity.verify_compressed_stream(good_gzip).ok
    assert integrity.file_sha256(good_gzip) != expected


def test_truncated_zstd_is_caught(tmp_path):
    path = tmp_path / "loyalty_20260101_000000.dump.zst"
    stream_to_file(io.BytesIO(ARCHIVE), path, compression="zstd")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert not integrity.verify_compressed_stream(path).ok


def test_empty_file_and_non_archive_are_caught(tmp_path):
    empty = tmp_path / "loyalty_20260101_000000.dump.gz"
    empty.write_bytes(b"")
    assert "empty" in integrity.verify_compressed_stream(empty).message
    other = tmp_path / "loyalty_20260101_000001.dump.gz"
    other.write_bytes(gzip.compress(b"SELECT 1;"))
    assert "not a pg_dump custom-format archive" in integrity.verify_compressed_stream(other).message


@pytest.mark.parametrize(
    "size, previous, ok",
    [(0, None, False), (100, None, True), (100, 150, True), (49, 100, False), (50, 100, True)],
)
def test_size_plausibility(size, previous, ok):
    assert integrity.size_is_plausible(size, previous).ok is ok


def test_toc_matching_handles_spaces_and_missing_data():
    toc = "\n".join(
        [
            ";",
            "; Archive created at 2026-11-27",
            "215; 1259 16390 TABLE public my table postgres",
            "216; 1259 16391 TABLE public events postgres",
            "3345; 0 16390 TABLE DATA public my table postgres",
        ]
    )
    tables = [TableRef("public", "my table", "postgres"), TableRef("public", "events", "postgres"),
              TableRef("public", "gone", "postgres")]
    assert integrity.missing_from_toc(toc, tables) == [
        "public.events (no TABLE DATA entry)", "public.gone (no TABLE entry)"
    ]


def test_progress_meter_reports_percent_rate_and_eta():
    now = [0.0]
    seen = []
    meter = ProgressMeter("dump", seen.append, expected_bytes=1000, interval_s=10, clock=lambda: now[0])
    meter.add(100)
    now[0] = 11.0
    meter.add(100)
    assert len(seen) == 1
    snap = seen[0]
    assert snap.done_bytes == 200 and snap.percent == pytest.approx(20.0)
    assert snap.eta_s == pytest.approx(44.0)
    assert "20%" in snap.message() and "ETA 44 s" in snap.message()

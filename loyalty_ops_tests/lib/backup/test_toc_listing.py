"""``pg_restore --list`` is fed the archive's header and table of contents, exactly, and its listing is taken
only whole.

A tool that exits with input still unread can lose its output on the way back (a container engine's exec
ends on the failed write); these tests run the real pg_restore on a real archive, and real processes that
lose a listing the way an engine does (nothing, or a cut tail, with exit code 0).
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from loyalty_ops.lib.backup.archive import ArchiveReader
from loyalty_ops.lib.backup.integrity import TocListing, list_toc, missing_from_toc, toc_entry_count
from loyalty_ops.lib.pg.catalog import TableRef
from loyalty_ops.lib.pg.tools import HostProcess, find_bin_dir
from loyalty_ops_tests.lib.backup.test_archive import block_starts, dump, read_all

PG_RESTORE = f"{find_bin_dir()}/pg_restore"
TABLES = [TableRef("public", name, "postgres") for name in ("events", "members", "redemptions", "rewards", "tenants")]


@pytest.fixture(scope="module")
def archive(pg_cluster, loyalty_db) -> bytes:
    return dump(pg_cluster, loyalty_db, "--compress=0")


@pytest.fixture(scope="module")
def backup_file(archive, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toc") / "loyalty_20261203_031500.dump.gz"
    path.write_bytes(gzip.compress(archive, 1))
    return path


class CountingStdin:
    """The real pipe to the tool, counting what is written to it."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.written = 0

    def write(self, data: bytes) -> int:
        self._pipe.write(data)
        self.written += len(data)
        return len(data)

    def close(self) -> None:
        self._pipe.close()


def start(*argv: str) -> HostProcess:
    return HostProcess(subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, bufsize=0))


@pytest.mark.parametrize("piece", [1, 4096, 1 << 22])
def test_the_table_of_contents_ends_where_the_first_data_block_starts(archive, piece):
    whole = read_all(archive)
    reader = ArchiveReader(toc_only=True)
    for i in range(0, len(archive), piece):
        reader.feed(archive[i : i + piece])
    assert reader.toc_end == min(block_starts(whole)) < len(archive) // 10
    assert reader.entries_read == len(whole.entries)
    reader.feed(b"\xff" * 100)  # past the TOC nothing is read, so nothing there can fail it


def test_pg_restore_is_fed_exactly_the_header_and_the_table_of_contents(archive, backup_file):
    process = start(PG_RESTORE, "--list")
    counting = CountingStdin(process.stdin)
    process.stdin = counting
    text, error = list_toc(backup_file, process)
    assert error is None
    assert counting.written == min(block_starts(read_all(archive)))
    # The listing is the one pg_restore gives of the whole file.
    whole = subprocess.run([PG_RESTORE, "--list"], input=archive, capture_output=True, check=True).stdout.decode()
    assert text == whole
    assert missing_from_toc(text, TABLES) == []
    assert toc_entry_count(text) == toc_entry_count(whole) > 40


def test_a_listing_lost_on_the_way_back_is_not_taken(backup_file):
    # Exit code 0 and nothing printed: what arrived through the container engine when the listing was lost.
    text, error = list_toc(backup_file, start("/bin/sh", "-c", "cat > /dev/null"))
    assert text is None
    assert "missing or cut short (0 bytes received)" in error and "was not checked" in error


def test_a_listing_cut_inside_a_line_is_not_taken(backup_file):
    process = start("/bin/sh", "-c", f'"{PG_RESTORE}" --list | head -c 1000')  # head exits 0
    text, error = list_toc(backup_file, process)
    assert text is None
    assert "ends inside a line (1000 bytes received)" in error


def test_a_listing_of_another_archive_is_not_taken(backup_file, pg_cluster, tmp_path):
    pg_cluster.create_database("toc_other", drop_existing=True)
    with pg_cluster.connect("toc_other") as conn:
        conn.execute("CREATE TABLE only_one (id int)")
    other = tmp_path / "other.dump"
    other.write_bytes(dump(pg_cluster, "toc_other"))
    process = start("/bin/sh", "-c", f'cat > /dev/null; "{PG_RESTORE}" --list "{other}"')
    text, error = list_toc(backup_file, process)
    assert text is None
    assert "reports" in error and "the listing is not of these bytes" in error


def test_a_failing_pg_restore_is_reported_with_its_words(tmp_path):
    not_an_archive = tmp_path / "loyalty_20261203_031500.dump.gz"
    not_an_archive.write_bytes(gzip.compress(b"this is not a pg_dump archive" * 100))
    text, error = list_toc(not_an_archive, start(PG_RESTORE, "--list"))
    assert text is None
    assert error.startswith("pg_restore --list failed with exit code 1") and "input file" in error


def test_the_listing_of_a_stream_fed_piece_by_piece(archive):
    listing = TocListing(start(PG_RESTORE, "--list"))
    for i in range(0, len(archive), 7919):
        listing.feed(archive[i : i + 7919])
    assert listing.fed_all
    text, error = listing.finish()
    assert error is None and missing_from_toc(text, TABLES) == []

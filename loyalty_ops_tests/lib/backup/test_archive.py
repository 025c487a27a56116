"""The archive reader checks a real pg_dump custom-format archive from its first byte to its last.

Archives come from the real ``pg_dump -Fc -Z0`` written to a pipe (as the backup writes them) against the
session's cluster; the faults are real cuts and additions of bytes.
"""

from __future__ import annotations

import subprocess

import pytest

from loyalty_ops.lib.backup.archive import ArchiveFormatError, ArchiveReader
from loyalty_ops.lib.pg.tools import find_bin_dir

AWKWARD_SQL = """
CREATE TABLE empty_table (id int);
CREATE TABLE wide (id int, body text, blob bytea);
INSERT INTO wide SELECT g, repeat(E'line\\nwith\\\\backslash\\ttab', 20000), decode(repeat('000a0d5c', 5000), 'hex')
    FROM generate_series(1, 20) g;
CREATE TABLE tiny_rows (v text);
INSERT INTO tiny_rows SELECT CASE WHEN g % 7 = 0 THEN NULL ELSE chr(10 + g % 5) END FROM generate_series(1, 50000) g;
CREATE TABLE measurements (at date, v int) PARTITION BY RANGE (at);
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measurements SELECT date '2026-01-01' + g % 300, g FROM generate_series(1, 3000) g;
CREATE MATERIALIZED VIEW wide_ids AS SELECT id FROM wide;
SELECT lo_from_bytea(0, decode(repeat('00ff0a', 40000), 'hex'));
"""


def dump(cluster, database: str, *extra: str) -> bytes:
    """The archive exactly as pg_dump streams it to the backup (custom format, to a pipe)."""
    env = {"PATH": "/usr/bin:/bin", **cluster.env(database)}
    result = subprocess.run(
        [f"{find_bin_dir()}/pg_dump", "--format=custom", *extra], env=env, capture_output=True, check=True
    )
    return result.stdout


def read_all(data: bytes, piece: int = 1 << 20):
    reader = ArchiveReader()
    for i in range(0, len(data), piece):
        reader.feed(data[i : i + piece])
    return reader.finish()


@pytest.fixture(scope="module")
def awkward_db(pg_cluster) -> str:
    pg_cluster.create_database("archive_awkward", drop_existing=True)
    with pg_cluster.connect("archive_awkward") as conn:
        conn.execute(AWKWARD_SQL)
    return "archive_awkward"


@pytest.fixture(scope="module")
def sample_archive(pg_cluster, loyalty_db) -> bytes:
    return dump(pg_cluster, loyalty_db, "--compress=0")


def block_starts(summary) -> list[int]:
    return sorted(summary.block_offsets.values())


def test_a_complete_archive_reads_to_its_last_byte(sample_archive, loyalty_db):
    summary = read_all(sample_archive)
    assert summary.archive_bytes == len(sample_archive)
    assert summary.database == loyalty_db
    assert summary.version.startswith("1.")
    tables = {entry.tag for entry in summary.entries if entry.desc == "TABLE DATA"}
    assert {"events", "members", "tenants", "rewards", "redemptions"} <= tables
    assert summary.data_blocks == len([e for e in summary.entries if e.has_data])
    assert sum(summary.block_bytes.values()) > 0.9 * len(sample_archive)


@pytest.mark.parametrize("piece", [1, 7, 4095, 4096, 65536, 1 << 22])
def test_the_verdict_does_not_depend_on_how_the_stream_is_cut_into_pieces(sample_archive, piece):
    data = sample_archive if piece > 100 else sample_archive[:200_000]
    if piece > 100:
        assert read_all(data, piece).archive_bytes == len(data)
    else:
        with pytest.raises(ArchiveFormatError, match="ends inside the data of TABLE DATA"):
            read_all(data, piece)


def test_awkward_data_reads_complete_in_every_layout(pg_cluster, awkward_db):
    # Empty tables, partitions, a materialized view, newlines/backslashes in text and bytea, very wide rows,
    # one-byte rows, NULLs and a large object (binary chunks: the exact walk, not the vectorised one).
    for extra in (["--compress=0"], ["--compress=6"]):
        archive = dump(pg_cluster, awkward_db, *extra)
        summary = read_all(archive, 65536)
        assert summary.archive_bytes == len(archive)
        data_tags = {e.tag for e in summary.entries if e.has_data}
        assert {"empty_table", "wide", "tiny_rows", "measurements_2026"} <= data_tags
        assert any(e.desc == "MATERIALIZED VIEW DATA" and e.tag == "wide_ids" for e in summary.entries)
        assert any(e.desc == "BLOBS" for e in summary.entries if e.has_data)


@pytest.mark.parametrize(
    "where",
    ["inside the header", "inside the TOC", "between blocks", "inside a block", "one byte short", "70 percent"],
)
def test_an_archive_cut_short_is_never_complete(sample_archive, where):
    data = sample_archive
    summary = read_all(data)
    starts = block_starts(summary)
    cut = {
        "inside the header": 20,
        "inside the TOC": starts[0] // 2,
        "between blocks": starts[-1],
        "inside a block": starts[-1] - 1000,
        "one byte short": len(data) - 1,
        "70 percent": int(len(data) * 0.7),
    }[where]
    with pytest.raises(ArchiveFormatError) as err:
        read_all(data[:cut])
    message = str(err.value)
    assert str(cut) in message
    if where == "between blocks":
        assert f"{len(starts) - 1} of {len(starts)} data blocks" in message and "missing TABLE DATA" in message


@pytest.mark.parametrize("garbage", [b"\x00", b"\x00\x00\x00\x00\x00", b"trailing text\n", b"\x01\x00\x05\x00\x00\x00"])
def test_garbage_after_the_last_block_is_refused(sample_archive, garbage):
    with pytest.raises(ArchiveFormatError, match="garbage after the end of the archive"):
        read_all(sample_archive + garbage)


def test_a_broken_chunk_length_inside_the_data_is_refused(sample_archive):
    summary = read_all(sample_archive)
    last_block = block_starts(summary)[-1]
    first_chunk = last_block + 6  # BLK_DATA byte + the dump id (sign byte + 4 bytes)
    damaged = bytearray(sample_archive)
    damaged[first_chunk + 1] ^= 0x40  # the first chunk's length now points into the middle of a row
    with pytest.raises(ArchiveFormatError):
        read_all(bytes(damaged))


def test_not_an_archive_is_refused_at_once():
    reader = ArchiveReader()
    with pytest.raises(ArchiveFormatError, match="not a pg_dump custom-format archive"):
        reader.feed(b"PGDMX" + b"\x00" * 100)

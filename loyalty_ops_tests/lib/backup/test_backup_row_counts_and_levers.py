"""A real backup counts its rows from its own dump stream (count(*) only as the fallback), and its levers
for production (a rate limit by back-pressure, a lower CPU priority) do what they say.

Real cluster, real pg_dump, real files; the expected numbers are count(*) in the same database.
"""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from loyalty_ops.lib.backup.dump import BackupRequest, take_backup
from loyalty_ops.lib.backup.integrity import iter_decompressed
from loyalty_ops.lib.backup.manifest import read_manifest
from loyalty_ops.lib.backup.row_counts import StreamRowCounter
from loyalty_ops.lib.backup.stream import run_at_lower_priority, stream_to_file
from loyalty_ops.lib.pg import catalog
from loyalty_ops.lib.pg.tools import HostToolRunner, find_bin_dir
from loyalty_ops_tests.lib.backup.test_stream_row_counts import AWKWARD_SQL


@pytest.fixture(scope="module")
def awkward_counts(pg_cluster):
    """A database of awkward tables and count(*) of every table (partitioned parents 0)."""
    pg_cluster.create_database("levers_awkward", drop_existing=True)
    with pg_cluster.connect("levers_awkward") as conn:
        conn.execute(AWKWARD_SQL)
        tables = catalog.list_user_tables(conn)
        return "levers_awkward", tables, catalog.count_rows(conn, tables)


def backup(pg_cluster, database, out: Path, **request):
    spec = pg_cluster.spec(database)
    return take_backup(spec, HostToolRunner(spec), BackupRequest(out, **request))


def test_the_backup_counts_rows_from_its_dump_stream_exactly(pg_cluster, awkward_counts, tmp_path):
    database, _, expected = awkward_counts
    result = backup(pg_cluster, database, tmp_path)
    assert result.row_counts == expected
    assert result.row_counts_source == "dump_stream"
    manifest = read_manifest(result.path)
    assert manifest.row_counts == expected and manifest.row_counts_source == "dump_stream"
    assert "counted from the dump stream" in manifest.row_counts_note
    assert manifest.row_counts["public.measurements"] == 0  # a partitioned parent: its partitions hold the rows
    # The rows come from the walk of the file read back from disk as it was written: the same walk checked it.
    checks = result.read_back_checks
    assert checks["stream_ok"] and checks["archive_complete"] and checks["data_blocks"] > 0
    assert checks["compressed_sha256"] == result.file.sha256


def test_count_star_remains_as_the_fallback_switch(pg_cluster, awkward_counts, tmp_path):
    database, _, expected = awkward_counts
    result = backup(pg_cluster, database, tmp_path, row_counts="count")
    assert result.row_counts == expected
    manifest = read_manifest(result.path)
    assert manifest.row_counts_source == "count" and "LOYALTY_BACKUP_ROW_COUNTS=count" in manifest.row_counts_note


def _archive(pg_cluster, database: str, *extra: str) -> bytes:
    env = {"PATH": "/usr/bin:/bin", **pg_cluster.env(database)}
    return subprocess.run(
        [f"{find_bin_dir()}/pg_dump", "-Fc", "-Z0", *extra], env=env, capture_output=True, check=True
    ).stdout


def test_a_table_without_copy_data_in_the_stream_is_counted_with_count_star(pg_cluster, awkward_counts):
    database, tables, expected = awkward_counts
    counter = StreamRowCounter()
    archive = _archive(pg_cluster, database, "--exclude-table-data=public.tiny_rows")
    for i in range(0, len(archive), 1 << 20):
        counter.feed(archive[i : i + (1 << 20)])
    with pg_cluster.connect(database) as conn:
        counted = counter.counts(conn, tables)
    assert counted.counts == expected
    assert counted.source == "dump_stream+count" and "public.tiny_rows" in counted.note


def test_a_stream_that_cannot_be_walked_falls_back_to_count_star(pg_cluster, awkward_counts):
    database, tables, expected = awkward_counts
    counter = StreamRowCounter()
    archive = _archive(pg_cluster, database)
    counter.feed(archive[: len(archive) // 2])  # cut short: the stream proves nothing about the rest
    with pg_cluster.connect(database) as conn:
        counted = counter.counts(conn, tables)
    assert counted.counts == expected
    assert counted.source == "count" and "could not be walked" in counted.note


def test_the_rate_limit_holds_the_reader_back(tmp_path):
    data = os.urandom(3 << 20)
    started = time.monotonic()
    written = stream_to_file(io.BytesIO(data), tmp_path / "x.dump.gz", chunk_bytes=256 << 10, max_rate_bps=2e6)
    elapsed = time.monotonic() - started
    # 3 MB at 2 MB/s with one second of burst: at least half a second of waiting, and every byte is there
    assert written.throttled_s >= 0.4 and elapsed >= 0.4
    assert b"".join(iter_decompressed(written.path)) == data


def test_nice_lowers_only_the_compressor_thread():
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = run_at_lower_priority(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), 5, "t")
    assert seen == min(caller + 5, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller


def test_a_rate_limited_low_priority_backup_says_so_and_lowers_pg_dump(pg_cluster, awkward_counts, tmp_path):
    database, _, expected = awkward_counts
    spec = pg_cluster.spec(database)
    lines, pg_dump_nice = [], []

    def on_progress(snapshot):
        lines.append(snapshot.message())
        for stat in [] if pg_dump_nice else Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and "pg_dump" in stat.with_name("comm").read_text():
                pg_dump_nice.append(int(fields[16]))  # stat field 19: nice

    result = take_backup(
        spec, HostToolRunner(spec), BackupRequest(tmp_path, progress_interval_s=0, max_rate_mbps=50, nice=7),
        on_progress=on_progress,
    )
    assert result.row_counts == expected
    assert any("rate limited to 50 MB/s" in line for line in lines)
    assert pg_dump_nice and set(pg_dump_nice) == {min(os.nice(0) + 7, 19)}

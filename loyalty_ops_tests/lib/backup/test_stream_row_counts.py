"""Rows counted from the dump stream equal ``count(*)`` in the dump's snapshot, on the awkward cases.

Real ``pg_dump -Fc -Z0`` archives of a real cluster, read by the archive reader in pieces of every size
(a row, a chunk header or a newline cut between two pieces); the expected numbers are ``count(*)``.
"""

from __future__ import annotations

import subprocess

import pytest

from loyalty_ops.lib.backup.archive import ArchiveReader
from loyalty_ops.lib.pg import catalog
from loyalty_ops.lib.pg.tools import find_bin_dir

AWKWARD_SQL = r'''
CREATE TABLE empty_table (id int);
CREATE TABLE emptied (id int, note text);
INSERT INTO emptied SELECT g, 'x' FROM generate_series(1, 100) g;
DELETE FROM emptied;
CREATE TABLE escapes (id int, body text, raw bytea);
INSERT INTO escapes SELECT g, E'line\nbreak\r\n\\back\\slash\ttab\\.' || g, decode(repeat('0a0d5c2e00', 50), 'hex')
    FROM generate_series(1, 3000) g;
INSERT INTO escapes VALUES (0, E'\\.', '\x0a'), (-1, E'\n', '\x'), (-2, NULL, NULL), (-3, '', '\x00');
CREATE TABLE wide (id int, body text, blob bytea);
INSERT INTO wide SELECT g, repeat(E'wide\nrow\\', 100000), decode(repeat('0a', 300000), 'hex')
    FROM generate_series(1, 3) g;
CREATE TABLE no_columns ();
INSERT INTO no_columns SELECT FROM generate_series(1, 777);
CREATE TABLE tiny_rows (v text);
INSERT INTO tiny_rows SELECT CASE WHEN g % 7 = 0 THEN NULL ELSE chr(10 + g % 5) END FROM generate_series(1, 40000) g;
CREATE TABLE lengths_of_ten (v text);
INSERT INTO lengths_of_ten SELECT lpad(g::text, 9, 'x') FROM generate_series(1, 5000) g;
CREATE TABLE measurements (at date, region text, v int) PARTITION BY RANGE (at);
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
    PARTITION BY LIST (region);
CREATE TABLE measurements_2026_north PARTITION OF measurements_2026 FOR VALUES IN ('north');
CREATE TABLE measurements_2026_rest PARTITION OF measurements_2026 DEFAULT;
CREATE TABLE measurements_empty PARTITION OF measurements FOR VALUES FROM ('2030-01-01') TO ('2031-01-01');
INSERT INTO measurements SELECT date '2025-06-01' + g % 400, CASE WHEN g % 3 = 0 THEN 'north' ELSE 'south' END, g
    FROM generate_series(1, 4000) g;
CREATE SCHEMA "odd schema";
CREATE TABLE "odd schema"."we.ird ""name""" (v text);
INSERT INTO "odd schema"."we.ird ""name""" SELECT 'v' || g FROM generate_series(1, 12) g;
CREATE UNLOGGED TABLE scratch (v int);
INSERT INTO scratch SELECT generate_series(1, 250);
CREATE MATERIALIZED VIEW wide_ids AS SELECT id FROM wide;
SELECT lo_from_bytea(0, decode(repeat('0a00ff', 200000), 'hex'));
SELECT lo_from_bytea(0, '\x0a');
'''


def dump(cluster, database: str, *extra: str) -> bytes:
    env = {"PATH": "/usr/bin:/bin", **cluster.env(database)}
    result = subprocess.run(
        [f"{find_bin_dir()}/pg_dump", "--format=custom", *extra], env=env, capture_output=True, check=True
    )
    return result.stdout


def read_all(data: bytes, piece: int):
    reader = ArchiveReader()
    for i in range(0, len(data), piece):
        reader.feed(data[i : i + piece])
    return reader.finish()


@pytest.fixture(scope="module")
def awkward(pg_cluster):
    """The awkward database, its -Z0 archive and count(*) of every ordinary table."""
    pg_cluster.create_database("rows_awkward", drop_existing=True)
    with pg_cluster.connect("rows_awkward") as conn:
        conn.execute(AWKWARD_SQL)
        tables = catalog.list_user_tables(conn)
        counts = catalog.count_rows(conn, tables)
    ordinary = {t.qualified: counts[t.qualified] for t in tables if t.kind == "r"}
    return dump(pg_cluster, "rows_awkward", "--compress=0"), ordinary


@pytest.mark.parametrize("piece", [7, 4096, 65536, 1 << 20, 1 << 30])
def test_stream_counts_equal_count_star_however_the_stream_is_cut(pg_cluster, awkward, piece):
    archive, expected = awkward
    if piece < 100:  # byte by byte through the exact walk: leave the megabyte rows out, for time
        archive = dump(pg_cluster, "rows_awkward", "--compress=0", "--exclude-table-data=public.wide")
        expected = {k: v for k, v in expected.items() if k != "public.wide"}
    summary = read_all(archive, piece)
    assert summary.row_counts == expected
    # the awkward cases are really there, with the numbers count(*) gives
    assert expected["public.empty_table"] == 0 and expected["public.emptied"] == 0
    assert expected["public.escapes"] == 3004 and expected.get("public.wide", 3) == 3
    assert expected["public.no_columns"] == 777 and expected["public.tiny_rows"] == 40000
    assert expected["public.measurements_2026_north"] > 0 and expected["public.measurements_empty"] == 0
    assert expected['odd schema.we.ird "name"'] == 12 and expected["public.scratch"] == 250


def test_only_copy_data_is_counted(awkward):
    archive, _ = awkward
    summary = read_all(archive, 1 << 20)
    counted = set(summary.row_counts)
    # partitioned parents have no data entry; a materialized view's data is a REFRESH, large objects are blobs
    assert "public.measurements" not in counted and "public.measurements_2026" not in counted
    assert "public.wide_ids" not in counted
    assert not any(e.desc == "BLOBS" and f"{e.namespace}.{e.tag}" in counted for e in summary.entries)
    assert any(e.desc == "BLOBS" for e in summary.entries if e.has_data)


def test_no_counts_from_an_archive_compressed_by_pg_dump(pg_cluster, awkward):
    summary = read_all(dump(pg_cluster, "rows_awkward", "--compress=6"), 1 << 20)
    assert summary.row_counts == {}
    assert summary.data_blocks > 0  # still read to its end

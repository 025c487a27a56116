"""The sample database generator (devstack/sample_data.py): the same scale always gives the same data, and
the bulk load used for large benchmark samples gives exactly the database the plain one does."""

from __future__ import annotations

from psycopg import sql

from devstack.sample_data import ROWS, bulk_load_sample, create_sample_schema, row_targets
from loyalty_ops_tests.helpers import schema_dump, table_fingerprints

# md5 of every table's rows in id order (timestamps in UTC) at scale 0.05, as the generator has always made
# them: a change here changes every sample the tests, the run command and the benchmarks use.
GOLDEN_SCALE = 0.05
GOLDEN_DIGESTS = {
    "tenants": "5f6bb4a64718afadbfb474fb586619f9",
    "members": "ca2e7956d3c7ebab894cd46773f94ab2",
    "events": "a87ea4eed387f2599f4959781bc7f2ad",
    "rewards": "3212687be4ac47b9515186bfa4933522",
    "redemptions": "ed08f7f75efed4beb59c632b7388f78f",
}


def ordered_digests(cluster, database: str) -> dict[str, str]:
    out = {}
    with cluster.connect(database) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        for table in ROWS:
            query = sql.SQL("SELECT md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM {} t").format(sql.Identifier(table))
            out[table] = conn.execute(query).fetchone()[0]
    return out


def sequence_positions(cluster, database: str) -> dict[str, tuple[int, bool]]:
    with cluster.connect(database) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(f"{table}_id_seq"))
            ).fetchone()
            for table in ROWS
        }


def test_the_same_scale_gives_the_same_rows_as_always(pg_cluster, make_database):
    database = make_database("sample_golden", sample_scale=None)
    with pg_cluster.connect(database) as conn:
        rows = create_sample_schema(conn, GOLDEN_SCALE)
    assert rows == row_targets(GOLDEN_SCALE) == {"tenants": 2, "members": 1000, "events": 5000, "rewards": 5, "redemptions": 500}
    assert ordered_digests(pg_cluster, database) == GOLDEN_DIGESTS


def test_bulk_load_makes_the_database_one_insert_per_table_makes(pg_cluster, make_database):
    scale = 0.1
    plain = make_database("sample_plain", sample_scale=scale)
    bulk = make_database("sample_bulk", sample_scale=None)
    messages: list[str] = []
    # Small ranges, two connections: members, events and redemptions each load in several interleaved ranges.
    rows = bulk_load_sample(lambda: pg_cluster.connect(bulk), scale, workers=2, chunk_rows=1_500, log=messages.append)

    assert rows == row_targets(scale)
    assert ordered_digests(pg_cluster, bulk) == ordered_digests(pg_cluster, plain)
    assert table_fingerprints(pg_cluster, bulk) == table_fingerprints(pg_cluster, plain)
    # Same tables, constraints (names and definitions), indexes, view and function.
    assert schema_dump(pg_cluster, bulk) == schema_dump(pg_cluster, plain)
    # nextval() continues where one INSERT per table would have left it.
    assert sequence_positions(pg_cluster, bulk) == sequence_positions(pg_cluster, plain)
    with pg_cluster.connect(bulk) as conn:
        assert conn.execute("SELECT nextval('events_id_seq')").fetchone()[0] == rows["events"] + 1
        # The keys were validated when they were put back: a dangling reference is refused.
        refused = False
        try:
            conn.execute("INSERT INTO events (tenant_id, member_id, kind, points, created_at) VALUES (1, %s, 'earn', 1, now())",
                         (rows["members"] + 1,))
        except Exception as exc:  # psycopg.errors.ForeignKeyViolation
            refused = "events_member_id_fkey" in str(exc)
        assert refused
        # Statistics are there for the planner and the reports.
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL AND last_analyze IS NOT NULL"
        ).fetchone()[0]
        assert analyzed == len(ROWS)
    progress = [m for m in messages if m.startswith("sample rows:")]
    assert len(progress) >= 10 and progress[-1].startswith(f"sample rows: {sum(rows.values()):,} of {sum(rows.values()):,} (100 %)")
    assert any("validated events_member_id_fkey" in m for m in messages)

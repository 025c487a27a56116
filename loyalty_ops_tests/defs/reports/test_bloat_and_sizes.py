"""bloat_report and database_size_report on the real cluster: bloat we create is reported, and the
statistics-based estimate agrees with pgstattuple."""

from __future__ import annotations

from loyalty_ops.definitions import defs
from loyalty_ops.lib.reports import bloat as bloat_lib
from loyalty_ops_tests.defs.reports.conftest import report_resources
from loyalty_ops_tests.helpers import materialization_metadata

# The estimate works from statistics (reltuples, avg_width), so it cannot match a page-by-page scan
# exactly; we require it to be within 10 percentage points of pgstattuple on a table with ~60% bloat.
ESTIMATE_TOLERANCE_POINTS = 10.0


def run_daily_reports(pg_cluster, database, instance, tmp_path):
    job = defs.resolve_job_def("daily_reports_job")
    result = job.execute_in_process(
        resources=report_resources(pg_cluster, database, tmp_path), instance=instance, raise_on_error=True
    )
    return materialization_metadata(result, "bloat_report"), materialization_metadata(result, "database_size_report")


def test_created_bloat_is_reported_and_estimate_agrees_with_pgstattuple(pg_cluster, make_database, dagster_instance, tmp_path):
    db = make_database("bloat", sample_scale=None)
    with pg_cluster.connect(db) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
        conn.execute("CREATE TABLE loyalty_cards (id bigint PRIMARY KEY, code text NOT NULL, points integer NOT NULL)")
        conn.execute("INSERT INTO loyalty_cards SELECT g, md5(g::text), g % 1000 FROM generate_series(1, 40000) g")
        conn.execute("CREATE TABLE tiers (id integer PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO tiers SELECT g, 'tier ' || g FROM generate_series(1, 5000) g")
        conn.execute("DELETE FROM loyalty_cards WHERE id % 10 < 6")
        conn.execute("VACUUM ANALYZE")
        conn.execute("CREATE TABLE never_analyzed (id integer, note text)")
        exact = float(conn.execute("SELECT free_percent + dead_tuple_percent FROM pgstattuple('loyalty_cards')").fetchone()[0])
    assert exact > 50, f"the test did not create the bloat it meant to ({exact:.1f}%)"

    bloat, sizes = run_daily_reports(pg_cluster, db, dagster_instance, tmp_path)

    worst = bloat["top_tables"][0]
    assert worst["name"] == "public.loyalty_cards"
    assert abs(worst["bloat_pct"] - exact) <= ESTIMATE_TOLERANCE_POINTS, (worst["bloat_pct"], exact)
    # pgstattuple_approx (what the report runs) agrees with the full pgstattuple scan.
    assert abs(worst["exact_bloat_pct"] - exact) <= 2.0
    assert "pgstattuple_approx" in worst["exact_note"]
    clean = next(t for t in bloat["top_tables"] if t["name"] == "public.tiers")
    assert clean["bloat_pct"] < 10
    pkey = next(i for i in bloat["top_indexes"] if i["index"] == "loyalty_cards_pkey")
    assert pkey["bloat_pct"] > 40 and pkey["exact_bloat_pct"] > 40
    assert bloat["pgstattuple_installed"] is True
    assert bloat["worst_table"] == "public.loyalty_cards"
    assert isinstance(bloat["total_bloat_bytes"], int) and bloat["total_bloat_bytes"] >= worst["bloat_bytes"] > 0
    assert isinstance(bloat["worst_table_bloat_pct"], float)
    assert bloat["not_estimated"] >= 1
    assert "public.loyalty_cards" in bloat["report"] and "never vacuumed or analyzed" in bloat["report"]
    assert bloat["most_bloated"].records[0].data["relation"] == "public.loyalty_cards"

    assert sizes["table_count"] == 3
    assert sizes["largest_table"] == "public.loyalty_cards"
    assert "growth_bytes" not in sizes and "first report" in sizes["report"]


def test_without_pgstattuple_the_report_says_so(pg_cluster, make_database):
    db = make_database("nostattuple", sample_scale=0.05)
    with pg_cluster.connect(db) as conn:
        conn.execute("ANALYZE")
        rows = bloat_lib.estimate_bloat(conn)
        state = bloat_lib.add_exact_figures(conn, rows, 5)
    assert not state.installed and state.available
    assert "CREATE EXTENSION pgstattuple" in state.explain("pgstattuple")
    assert all(r.exact_bloat_pct is None for r in rows)
    assert {r.table for r in rows if r.kind == "table"} >= {"events", "members", "tenants"}


def test_size_report_shows_growth_since_previous_materialization(pg_cluster, make_database, dagster_instance, tmp_path):
    db = make_database("sizes", sample_scale=0.05)
    _, first = run_daily_reports(pg_cluster, db, dagster_instance, tmp_path)
    with pg_cluster.connect(db) as conn:
        conn.execute("INSERT INTO events (tenant_id, member_id, kind, points, created_at) "
                     "SELECT 1, 1, 'earn', 1, now() FROM generate_series(1, 20000)")
        conn.execute("CREATE TABLE new_table AS SELECT g FROM generate_series(1, 1000) g")
    _, second = run_daily_reports(pg_cluster, db, dagster_instance, tmp_path)
    assert second["database_bytes"] > first["database_bytes"]
    assert second["growth_bytes"] == second["database_bytes"] - first["database_bytes"] > 0
    assert second["grown_tables"] >= 1
    assert "Growth since" in second["report"] and "public.events" in second["report"]
    assert "New tables: `public.new_table`" in second["report"]
    assert second["table_total_bytes"]["public.events"] > first["table_total_bytes"]["public.events"]

"""An index that grew since the last VACUUM/ANALYZE looks as small as it was (``relpages`` is refreshed only
by VACUUM, ANALYZE or a rebuild), so the plan made before the run cannot see its bloat. Smart mode looks
again at the indexes of the tables it has just vacuumed, on the real cluster."""

from __future__ import annotations

import logging

from loyalty_ops.lib.maintenance import stats as pgstats
from loyalty_ops.lib.maintenance.execute import ExecutionSettings, MaintenanceExecutor, connect
from loyalty_ops.lib.maintenance.plan import Thresholds, plan_maintenance

LOG = logging.getLogger("maintenance-test")
SMALL = Thresholds(min_index_bloat_bytes=64 * 1024)


def test_indexes_grown_since_the_last_analyze_are_rebuilt_after_their_tables_vacuum(pg_cluster, make_database):
    db = make_database("replan", sample_scale=None)
    with pg_cluster.connect(db) as conn:
        conn.execute("CREATE TABLE carts (id int PRIMARY KEY, updated_at int NOT NULL) WITH (autovacuum_enabled = false)")
        conn.execute("CREATE INDEX carts_updated_idx ON carts (updated_at)")
        conn.execute("CREATE TABLE quiet (id int PRIMARY KEY) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO carts SELECT g, g FROM generate_series(1, 30000) g")
        conn.execute("INSERT INTO quiet SELECT generate_series(1, 30000)")
        conn.execute("SELECT pg_stat_force_next_flush()")  # the inserts counted before ANALYZE, not after
        conn.execute("SELECT 1")
        conn.execute("ANALYZE")
        conn.execute("UPDATE carts SET updated_at = updated_at + 1")  # indexed column: every index doubles
        conn.execute("SELECT pg_stat_force_next_flush()")
    with connect(pg_cluster.spec(db)) as conn:
        plan = plan_maintenance(pgstats.read_table_stats(conn), pgstats.read_index_stats(conn), SMALL, pgstats.server_now(conn))
        assert [i.name for i in plan.tables] == ["carts"] and plan.reindexes == []  # stale sizes: bloat not seen
        report = MaintenanceExecutor(conn, ExecutionSettings(max_attempts=1), LOG).execute_plan(plan)
    rebuilt = {i.name: i for i in report.items if i.action == "reindex"}
    assert sorted(rebuilt) == ["carts_pkey", "carts_updated_idx"]
    for item in rebuilt.values():
        assert item.status == "done" and item.rules == ["index_bloat_after_vacuum"]
        assert item.bytes_after < item.bytes_before * 0.7
    assert sorted(i.name for i in plan.reindexes) == ["carts_pkey", "carts_updated_idx"]  # the plan shows them
    assert "quiet_pkey" not in rebuilt  # only the vacuumed tables' indexes are looked at again

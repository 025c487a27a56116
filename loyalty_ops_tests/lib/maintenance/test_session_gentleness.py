"""How gently a maintenance session shares the server with the API, checked on the real cluster: the
session settings are in force for the statements the executor runs (one core, cost-based VACUUM delay,
maintenance_work_mem), bad values are refused before anything runs, and objects are paced apart."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from loyalty_ops.lib.maintenance.execute import ExecutionSettings, MaintenanceExecutor, MaintenanceReport, connect
from loyalty_ops.lib.maintenance.plan import PlanItem, Reason

LOG = logging.getLogger("maintenance-test")


@pytest.fixture(scope="module")
def gentle_db(pg_cluster) -> str:
    """Two tables with two indexes over 512 kB each and dead tuples: VACUUM vacuums such indexes with
    parallel workers unless the session says otherwise."""
    name = "gentle_maintenance"
    pg_cluster.create_database(name, drop_existing=True)
    with pg_cluster.connect(name) as conn:
        for table in ("wide_a", "wide_b"):
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL) WITH (autovacuum_enabled = false)")
            conn.execute(f"CREATE INDEX ON {table} (v)")
            conn.execute(f"INSERT INTO {table} SELECT g, g FROM generate_series(1, 30000) g")
    yield name
    pg_cluster.drop_database(name)


def churn(pg_cluster, db: str, table: str) -> None:
    with pg_cluster.connect(db) as conn:
        conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id % 2 = 0")


def table_item(conn, name: str) -> PlanItem:
    oid = conn.execute("SELECT %s::regclass::oid::bigint", (name,)).fetchone()[0]
    return PlanItem(kind="table", action="vacuum", oid=oid, schema="public", name=name, reasons=(Reason("chosen", "test"),))


def show(conn, setting: str) -> str:
    return conn.execute(f"SHOW {setting}").fetchone()[0]


def test_the_session_runs_with_the_configured_settings(pg_cluster, gentle_db):
    settings = ExecutionSettings(parallel_workers=1, vacuum_cost_delay_ms=2, vacuum_cost_limit=400, maintenance_work_mem_mb=256)
    with connect(pg_cluster.spec(gentle_db)) as conn:
        server_default = show(conn, "maintenance_work_mem")
        MaintenanceExecutor(conn, settings, LOG).close()
        assert show(conn, "max_parallel_maintenance_workers") == "1"
        assert show(conn, "vacuum_cost_delay") == "2ms"
        assert show(conn, "vacuum_cost_limit") == "400"
        assert show(conn, "maintenance_work_mem") == "256MB" != server_default
    with connect(pg_cluster.spec(gentle_db)) as conn:  # the defaults: one core, the server's memory, no delay
        MaintenanceExecutor(conn, ExecutionSettings(), LOG).close()
        assert show(conn, "maintenance_work_mem") == server_default
        assert show(conn, "max_parallel_maintenance_workers") == "0"
        assert show(conn, "vacuum_cost_delay") == "0"
    with connect(pg_cluster.spec(gentle_db)) as conn:  # None: the server's own parallel workers
        MaintenanceExecutor(conn, ExecutionSettings(parallel_workers=None), LOG).close()
        assert show(conn, "max_parallel_maintenance_workers") == "2"


def test_one_core_where_postgres_would_launch_parallel_vacuum_workers(pg_cluster, gentle_db):
    """The proof that the setting matters: the same VACUUM plans parallel index workers on a plain session
    (PostgreSQL's default of 2) and none on a maintenance session with its default settings (parallel_workers 0)."""

    def verbose_vacuum(conn, table: str) -> list[str]:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        churn(pg_cluster, gentle_db, table)
        conn.execute(f"VACUUM (VERBOSE) {table}")
        return [n for n in notices if "parallel vacuum worker" in n]

    with pg_cluster.connect(gentle_db) as plain:
        assert verbose_vacuum(plain, "wide_a"), "a plain session should plan parallel index vacuum workers"
    with connect(pg_cluster.spec(gentle_db)) as conn:  # the default
        MaintenanceExecutor(conn, ExecutionSettings(), LOG).close()
        assert verbose_vacuum(conn, "wide_a") == []


def test_cost_based_delay_throttles_the_executors_vacuum(pg_cluster, gentle_db):
    """With a cost delay the executor's own VACUUM sleeps between pages (wait event VacuumDelay), seen from
    a second connection while it runs."""
    churn(pg_cluster, gentle_db, "wide_b")
    settings = ExecutionSettings(vacuum_cost_delay_ms=5, vacuum_cost_limit=20, max_attempts=1)
    seen: set[str] = set()
    with connect(pg_cluster.spec(gentle_db)) as conn:
        ex = MaintenanceExecutor(conn, settings, LOG)
        report = MaintenanceReport(mode="manual", database=gentle_db)
        worker = threading.Thread(target=ex.run_items, args=([table_item(conn, "wide_b")], report))
        pid = conn.info.backend_pid
        worker.start()
        with pg_cluster.connect(gentle_db) as probe:
            while worker.is_alive():
                row = probe.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
                if row and row[0]:
                    seen.add(row[0])
                time.sleep(0.02)
        worker.join()
        ex.close()
    (result,) = report.items
    assert result.status == "done", result
    assert "VacuumDelay" in seen, seen


def test_objects_are_paced_apart(pg_cluster, gentle_db):
    settings = ExecutionSettings(pause_between_objects_s=0.25, max_attempts=1)
    with connect(pg_cluster.spec(gentle_db)) as conn:
        ex = MaintenanceExecutor(conn, settings, LOG)
        report = MaintenanceReport(mode="manual", database=gentle_db)
        started = time.monotonic()
        ex.run_items([table_item(conn, "wide_a"), table_item(conn, "wide_b"), table_item(conn, "wide_a")], report)
        elapsed = time.monotonic() - started
        ex.close()
    assert [i.status for i in report.items] == ["done"] * 3
    assert elapsed >= 2 * 0.25  # two pauses, between three objects (none before the first)


@pytest.mark.parametrize(
    "field, value",
    [
        ("parallel_workers", -1),
        ("vacuum_cost_delay_ms", 150),
        ("vacuum_cost_delay_ms", -1),
        ("vacuum_cost_limit", 0),
        ("maintenance_work_mem_mb", -5),
        ("pause_between_objects_s", -0.5),
    ],
)
def test_bad_gentleness_settings_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ExecutionSettings(**{field: value}).validate()

"""Where VACUUM's SKIP_LOCKED is not enough, measured on the real cluster.

SKIP_LOCKED only skips a relation VACUUM cannot lock *at once*. VACUUM ANALYZE of an inheritance parent
still waits for a lock on each child to sample its rows (documented for partitions, inheritance children
and some foreign tables): without lock_timeout it would sit in the lock queue for as long as the other
session likes. These tests pin down both paths of the executor: the immediate skip, and the wait that
only lock_timeout bounds.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest

from loyalty_ops.lib.maintenance.execute import ExecutionSettings, MaintenanceExecutor, connect
from loyalty_ops.lib.maintenance.plan import PlanItem, Reason

LOG = logging.getLogger("maintenance-test")


def vacuum_item(conn: psycopg.Connection, name: str) -> PlanItem:
    oid = conn.execute("SELECT %s::regclass::oid::bigint", (name,)).fetchone()[0]
    return PlanItem(kind="table", action="vacuum", oid=oid, schema="public", name=name, reasons=(Reason("chosen", "test"),))


@pytest.fixture
def lock_db(pg_cluster, make_database) -> str:
    name = make_database("mlock", sample_scale=None)
    with pg_cluster.connect(name) as conn:
        conn.execute("CREATE TABLE plain (id int PRIMARY KEY)")
        conn.execute("INSERT INTO plain SELECT generate_series(1, 1000)")
        conn.execute("CREATE TABLE parent (id int)")
        conn.execute("CREATE TABLE child () INHERITS (parent)")
        conn.execute("INSERT INTO child SELECT generate_series(1, 1000)")
    return name


def executor(pg_cluster, db, lock_timeout_s: float) -> MaintenanceExecutor:
    settings = ExecutionSettings(lock_timeout_s=lock_timeout_s, max_attempts=1, retry_delay_s=0)
    return MaintenanceExecutor(connect(pg_cluster.spec(db)), settings, LOG)


def test_share_update_exclusive_holder_is_skipped_at_once_by_skip_locked(pg_cluster, lock_db):
    """Autovacuum or a CREATE INDEX CONCURRENTLY holds SHARE UPDATE EXCLUSIVE: the size probe passes,
    VACUUM (SKIP_LOCKED) returns at once with a warning, and the table is reported skipped."""
    holder = pg_cluster.connect(lock_db, autocommit=False)
    try:
        holder.execute("LOCK TABLE plain IN SHARE UPDATE EXCLUSIVE MODE")
        ex = executor(pg_cluster, lock_db, lock_timeout_s=5.0)
        from loyalty_ops.lib.maintenance.execute import MaintenanceReport

        report = MaintenanceReport(mode="manual", database=lock_db)
        started = time.monotonic()
        ex.run_items([vacuum_item(ex.conn, "plain")], report)
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    (result,) = report.items
    assert result.status == "skipped"
    assert "SKIP_LOCKED: skipping vacuum of \"plain\" --- lock not available" in result.reason
    assert "ShareUpdateExclusiveLock" in result.reason
    assert elapsed < 1.0  # never waited, although lock_timeout was 5 s


def test_analyze_of_inheritance_parent_waits_despite_skip_locked_and_lock_timeout_bounds_it(pg_cluster, lock_db):
    holder = pg_cluster.connect(lock_db, autocommit=False)
    try:
        holder.execute("LOCK TABLE child IN ACCESS EXCLUSIVE MODE")
        # Proof that SKIP_LOCKED alone waits: a bare VACUUM (ANALYZE, SKIP_LOCKED) of the parent is still
        # waiting on the child's lock after 0.7 s, and ends only through its own lock_timeout.
        bare = pg_cluster.connect(lock_db)
        outcome: dict = {}

        def bare_vacuum() -> None:
            try:
                bare.execute("SET lock_timeout = '1500ms'")
                bare.execute("VACUUM (ANALYZE, SKIP_LOCKED) parent")
                outcome["result"] = "finished"
            except psycopg.errors.LockNotAvailable:
                outcome["result"] = "lock timeout"

        thread = threading.Thread(target=bare_vacuum)
        thread.start()
        time.sleep(0.7)
        with pg_cluster.connect(lock_db) as probe:
            waiting = probe.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (bare.info.backend_pid,)
            ).fetchone()[0]
        thread.join()
        bare.close()
        assert waiting == "Lock" and outcome["result"] == "lock timeout"

        # The executor: bounded by its lock_timeout, reported as a lock skip naming the wait.
        lock_timeout = 0.3
        ex = executor(pg_cluster, lock_db, lock_timeout_s=lock_timeout)
        from loyalty_ops.lib.maintenance.execute import MaintenanceReport

        report = MaintenanceReport(mode="manual", database=lock_db)
        ex.run_items([vacuum_item(ex.conn, "parent"), vacuum_item(ex.conn, "plain")], report)
    finally:
        holder.rollback()
        holder.close()
    parent, plain = report.items
    assert parent.status == "skipped" and "lock timeout" in parent.reason
    assert lock_timeout * 0.8 <= parent.longest_wait_s <= lock_timeout + 0.3
    assert plain.status == "done"


class ListLog:
    def __init__(self):
        self.messages: list[str] = []

    def info(self, msg: str) -> None:
        self.messages.append(msg)

    warning = info


def test_long_statement_reports_progress_and_what_it_waits_for(pg_cluster, lock_db):
    """A statement that outlives progress_interval_s logs that it is alive and what it is doing."""
    from psycopg import sql

    holder = pg_cluster.connect(lock_db, autocommit=False)
    log = ListLog()
    try:
        holder.execute("LOCK TABLE child IN ACCESS EXCLUSIVE MODE")
        settings = ExecutionSettings(lock_timeout_s=0.8, progress_interval_s=0.25, max_attempts=1)
        ex = MaintenanceExecutor(connect(pg_cluster.spec(lock_db)), settings, log, spec=pg_cluster.spec(lock_db))
        with pytest.raises(psycopg.errors.LockNotAvailable):
            ex._run(sql.SQL("VACUUM (ANALYZE, SKIP_LOCKED) parent"), "VACUUM public.parent")
    finally:
        holder.rollback()
        holder.close()
    beats = [m for m in log.messages if m.startswith("VACUUM public.parent: still running after")]
    assert beats, log.messages
    assert any("waiting on Lock/relation" in m for m in beats), beats


def test_vacuum_refused_for_lack_of_ownership_is_skipped_not_done(pg_cluster, lock_db):
    """VACUUM of someone else's table is only a WARNING ("skipping ... only table or database owner"):
    it must be reported as skipped with that reason, never as done."""
    import dataclasses
    import uuid

    from psycopg import sql

    role, password = f"maint_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with pg_cluster.connect(lock_db) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    try:
        spec = dataclasses.replace(pg_cluster.spec(lock_db), user=role, password=password)
        ex = MaintenanceExecutor(connect(spec), ExecutionSettings(max_attempts=1), LOG)
        from loyalty_ops.lib.maintenance.execute import MaintenanceReport

        report = MaintenanceReport(mode="manual", database=lock_db)
        ex.run_items([vacuum_item(ex.conn, "plain")], report)
        ex.conn.close()
    finally:
        with pg_cluster.connect(lock_db) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    (result,) = report.items
    assert result.status == "skipped" and "owner" in result.reason, result

"""Maintenance reports what it could not do, and why: a forgotten transaction on a second connection
stalls `REINDEX ... CONCURRENTLY`; the skip reasons name that session (pid, state, transaction age, query),
never "lock not available" for a table nobody locked, and the run fails when none of the planned work was
done."""

from __future__ import annotations

import time

import psycopg

from loyalty_ops.defs.maintenance.assets import WORK_DONE_CHECK
from loyalty_ops_tests.defs.maintenance.conftest import invalid_indexes, run_maintenance
from loyalty_ops_tests.helpers import materialization_metadata

LOCK_TIMEOUT = {"lock_timeout_s": 0.3, "max_attempts": 2, "retry_delay_s": 0.1}


def forgotten_transaction(pg_cluster, database: str, table: str, isolation: str) -> psycopg.Connection:
    """A session that read one row and then sat idle in its transaction, like a report tool left open."""
    conn = pg_cluster.connect(database, autocommit=False)
    conn.execute("SET application_name = 'forgotten-report'")
    conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
    conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
    return conn


def test_a_full_concurrent_reindex_stalled_by_an_old_transaction_names_it_and_fails(pg_cluster, maint_db, dagster_instance):
    blocker = forgotten_transaction(pg_cluster, maint_db, "idle", "REPEATABLE READ")
    blocker_pid = blocker.info.backend_pid
    try:
        time.sleep(1.2)  # an old transaction: its age shows in the report
        result = run_maintenance(
            pg_cluster, maint_db, dagster_instance, {"mode": "full", "full_reindex": "concurrently", **LOCK_TIMEOUT}
        )
    finally:
        blocker.rollback()
        blocker.close()

    assert not result.success  # 0 of 4 indexes rebuilt is not a success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == WORK_DONE_CHECK and not check.passed
    assert check.description.startswith("0 of 4 indexes rebuilt: blocked by pid ")
    assert f"blocked by pid {blocker_pid} (idle in transaction, transaction open " in check.description
    assert "app 'forgotten-report'" in check.description and "query 'SELECT 1 FROM idle LIMIT 1'" in check.description
    assert "for 4 of 4" in check.description
    blocked_by = check.metadata["blocked_by"].value
    assert [b["pid"] for b in blocked_by] == [blocker_pid] and blocked_by[0]["xact_age_s"] >= 1
    assert check.metadata["indexes_planned"].value == 4 and check.metadata["indexes_reindexed"].value == 0

    meta = materialization_metadata(result, "weekly_maintenance")
    assert meta["indexes_reindexed"] == 0 and meta["tables_vacuumed"] == 4  # VACUUM does not wait for it
    assert "**Nothing done:** 0 of 4 indexes rebuilt" in meta["results"]
    reindexes = [o for o in meta["objects"] if o["action"] == "reindex"]
    assert len(reindexes) == 4
    for o in reindexes:
        assert o["status"] == "skipped" and o["attempts"] == 2, o
        assert f"pid {blocker_pid} (idle in transaction, transaction open" in o["reason"], o["reason"]
        assert "older transactions to end" in o["reason"] and "virtualxid" in o["reason"]
        # the blocker read `idle` only: no table was locked, and no skip says so
        assert "not available" not in o["reason"], o["reason"]
        assert o["blocked_by"][0]["pid"] == blocker_pid
    # DROP INDEX CONCURRENTLY of the failed rebuilds' copies waits for the same transaction: they are left
    # for the next run, and the report says so and why
    with pg_cluster.connect(maint_db) as conn:
        left = sorted(invalid_indexes(conn))
    drops = {o["object"]: o for o in meta["objects"] if o["action"] == "drop" and o["status"] != "done"}
    assert sorted(drops) == left
    assert all(f"pid {blocker_pid}" in o["reason"] for o in drops.values())
    print("\n".join(f"{o['action']} {o['object']}: {o['reason']}" for o in meta["objects"] if o["status"] != "done"))


def test_only_the_blocked_index_is_skipped_and_the_run_succeeds_when_some_work_was_done(
    pg_cluster, maint_db, dagster_instance
):
    """A read-committed transaction that read `hot` holds up only the rebuild of `hot`'s index (REINDEX
    CONCURRENTLY waits for the transactions using its table); `bloated_pkey` is rebuilt and the run passes."""
    blocker = forgotten_transaction(pg_cluster, maint_db, "hot", "READ COMMITTED")
    blocker_pid = blocker.info.backend_pid
    try:
        result = run_maintenance(
            pg_cluster, maint_db, dagster_instance, {"indexes": ["hot_pkey", "bloated_pkey"], **LOCK_TIMEOUT}
        )
    finally:
        blocker.rollback()
        blocker.close()
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.description == "0 of 0 tables vacuumed, 1 of 2 indexes rebuilt"
    meta = materialization_metadata(result, "weekly_maintenance")
    objects = {o["object"]: o for o in meta["objects"]}
    assert objects["public.bloated_pkey"]["status"] == "done"
    hot = objects["public.hot_pkey"]
    assert hot["status"] == "skipped" and f"blocked by pid {blocker_pid} (idle in transaction" in hot["reason"]
    assert "query 'SELECT 1 FROM hot LIMIT 1'" in hot["reason"]


def test_a_blocked_reindex_database_fails_naming_the_session_that_holds_the_table(pg_cluster, maint_db, dagster_instance):
    holder = pg_cluster.connect(maint_db, autocommit=False)
    holder.execute("SET application_name = 'schema-migration'")
    holder.execute("LOCK TABLE idle IN ACCESS EXCLUSIVE MODE")
    holder_pid = holder.info.backend_pid
    try:
        result = run_maintenance(pg_cluster, maint_db, dagster_instance, {"mode": "full", **LOCK_TIMEOUT})
    finally:
        holder.rollback()
        holder.close()
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert "REINDEX DATABASE could not get its locks within lock_timeout 0.3 s after 2 attempts" in message
    assert f"blocked by: pid {holder_pid} (idle in transaction" in message
    assert "app 'schema-migration'" in message and "query 'LOCK TABLE idle IN ACCESS EXCLUSIVE MODE'" in message

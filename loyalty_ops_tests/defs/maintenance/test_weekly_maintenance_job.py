"""Weekly maintenance end to end on the real throwaway cluster: what gets chosen, what gets cleaned, and
that nothing - locked tables, failed concurrent rebuilds, writers - is made to wait."""

from __future__ import annotations

import time

import dagster as dg

from loyalty_ops.definitions import defs
from loyalty_ops.defs.backups.definitions import DATABASE_LOCK_TAG
from loyalty_ops_tests.defs.maintenance.conftest import (
    ODD_INDEX,
    ODD_SCHEMA,
    ODD_TABLE,
    Writer,
    flush_stats,
    invalid_indexes,
    make_leftover,
    release_after_leftover,
    run_maintenance,
    table_counters,
)
from loyalty_ops_tests.helpers import materialization_metadata

# Small test tables: make index bloat of a few hundred KB count.
SMALL = {"min_index_bloat_bytes": 64 * 1024}
ODD_QUALIFIED = f"{ODD_SCHEMA}.{ODD_TABLE}"


def test_job_wiring_schedule_tags_and_pool():
    job = defs.resolve_job_def("weekly_maintenance_job")
    assert job.tags[DATABASE_LOCK_TAG] == "loyalty"
    assert job.tags["loyalty_ops/severity"] == "warning"
    schedule = defs.resolve_schedule_def("weekly_maintenance_schedule")
    assert schedule.cron_schedule == "0 3 * * 0"
    assert schedule.execution_timezone == "Africa/Harare"
    asset = defs.resolve_assets_def("weekly_maintenance")
    # One pool for every op that loads the database: maintenance never overlaps a dump or a restore,
    # even when one of them was materialized ad hoc (without the job's lock tag).
    assert asset.op.pool == "loyalty_db"
    for other in ("database_backup", "restore_drill"):
        assert defs.resolve_assets_def(other).op.pool == "loyalty_db"
    assert asset.group_names_by_key[dg.AssetKey("weekly_maintenance")] == "maintenance"


def test_schedule_run_config_from_environment():
    from loyalty_ops.defs.maintenance.definitions import scheduled_run_config
    from loyalty_ops.defs.settings import load_settings

    assert scheduled_run_config(load_settings({})) == {}
    assert scheduled_run_config(load_settings(
        {"LOYALTY_MAINTENANCE_MODE": "full", "LOYALTY_MAINTENANCE_FULL_REINDEX": "concurrently",
         "LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S": "5"}
    )) == {"ops": {"weekly_maintenance": {"config": {"mode": "full", "full_reindex": "concurrently", "lock_timeout_s": 5.0}}}}


def test_one_core_by_default_and_null_gives_the_servers_parallel_workers():
    """The launchpad's parallel_workers: absent means one core per VACUUM/REINDEX (the default that keeps the
    API's tail latency down), null the server's own max_parallel_maintenance_workers, a number that number."""
    from loyalty_ops.defs.maintenance.assets import MaintenanceConfig

    job = defs.resolve_job_def("weekly_maintenance_job")
    for given, parallel, session in ((None, 0, "0"), ({"parallel_workers": None}, None, None),
                                     ({"parallel_workers": 2}, 2, "2")):
        resolved = dg.validate_run_config(job, {"ops": {"weekly_maintenance": {"config": given or {}}}})
        settings = MaintenanceConfig(**resolved["ops"]["weekly_maintenance"]["config"]).settings()
        assert settings.parallel_workers == parallel
        assert settings.session_settings().get("max_parallel_maintenance_workers") == session


def test_bloated_tables_chosen_and_cleaned_idle_one_not(pg_cluster, maint_db, dagster_instance):
    with pg_cluster.connect(maint_db) as conn:
        before = table_counters(conn)
    gentle = {"vacuum_cost_delay_ms": 1.0, "maintenance_work_mem_mb": 128, "parallel_workers": 0}
    result = run_maintenance(pg_cluster, maint_db, dagster_instance, {**SMALL, **gentle})
    assert result.success
    meta = materialization_metadata(result, "weekly_maintenance")
    # The session ran as configured, and the metadata says so.
    assert meta["session_settings"] == {
        "max_parallel_maintenance_workers": "0", "vacuum_cost_delay": "1ms", "vacuum_cost_limit": "200",
        "maintenance_work_mem": "128MB",
    }
    objects = {(o["action"], o["object"]): o for o in meta["objects"]}
    # Chosen by rule, cleaned: the plain bloated table and the one whose schema, table and index names have
    # quotes, spaces and mixed case.
    for table in ("public.bloated", ODD_QUALIFIED):
        done = objects[("vacuum", table)]
        assert done["status"] == "done" and "dead_ratio" in done["rules"]
        assert done["dead_before"] == 9_000 and done["dead_after"] == 0
    for index in ("public.bloated_pkey", f"{ODD_SCHEMA}.{ODD_INDEX}"):
        rebuilt = objects[("reindex", index)]
        assert rebuilt["status"] == "done" and rebuilt["rules"] == ["index_bloat"]
        assert rebuilt["bytes_after"] < rebuilt["bytes_before"] / 3
    assert ("vacuum", "public.idle") not in objects and ("reindex", "public.idle_pkey") not in objects
    with pg_cluster.connect(maint_db) as conn:
        after = table_counters(conn)
    assert after["public.bloated"][0] == before["public.bloated"][0] + 1 and after["public.bloated"][1] == 0
    assert after[ODD_QUALIFIED][1] == 0
    assert after["public.idle"] == before["public.idle"]
    # The cross-domain contract, numbers as numbers.
    assert meta["mode"] == "smart"
    assert meta["tables_vacuumed"] == 2 and meta["indexes_reindexed"] == 2
    assert meta["skipped"] == 0 and isinstance(meta["reclaimed_bytes"], int) and meta["reclaimed_bytes"] > 250_000
    assert isinstance(meta["duration_s"], float)
    assert "| vacuum | `public.bloated`" in meta["plan"] and "dead_ratio" in meta["plan"]


def test_dry_run_plans_only_unknown_table_fails_first_and_quoted_names_resolve(pg_cluster, maint_db, dagster_instance):
    with pg_cluster.connect(maint_db) as conn:
        before = table_counters(conn)

    # dry_run: the plan is shown (an observation), nothing is materialized or vacuumed.
    result = run_maintenance(pg_cluster, maint_db, dagster_instance, {**SMALL, "dry_run": True})
    assert result.success
    assert not result.get_asset_materialization_events()
    observations = [e.event_specific_data.asset_observation for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    plan = observations[0].metadata["plan"].value
    assert "`public.bloated`" in plan and "`public.idle`" not in plan and "index_bloat" in plan
    with pg_cluster.connect(maint_db) as conn:
        assert table_counters(conn) == before

    # An unknown table in a manual launch: a clear error naming it, before anything runs.
    result = run_maintenance(
        pg_cluster, maint_db, dagster_instance, {"tables": ["public.bloated", "public.no_such_table"]}
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert "'public.no_such_table' does not exist" in message and "'tables'" in message
    with pg_cluster.connect(maint_db) as conn:
        assert table_counters(conn) == before  # public.bloated was not vacuumed either

    # A manual list takes SQL-quoted names as well as the plain schema.name form.
    result = run_maintenance(
        pg_cluster, maint_db, dagster_instance,
        {"tables": ['"Odd ""Schema"" x"."Mixed Case ""T"" y"'], "indexes": [f"{ODD_SCHEMA}.{ODD_INDEX}"]},
    )
    assert result.success
    meta = materialization_metadata(result, "weekly_maintenance")
    assert [(o["action"], o["object"], o["status"], o["rules"]) for o in meta["objects"]] == [
        ("vacuum", ODD_QUALIFIED, "done", ["chosen"]),
        ("reindex", f"{ODD_SCHEMA}.{ODD_INDEX}", "done", ["chosen"]),
    ]


def test_table_locked_access_exclusive_is_skipped_within_lock_timeout(pg_cluster, maint_db, dagster_instance):
    lock_timeout = 0.4
    holder = pg_cluster.connect(maint_db, autocommit=False)
    try:
        holder.execute("LOCK TABLE bloated IN ACCESS EXCLUSIVE MODE")  # open transaction holds it
        started = time.monotonic()
        result = run_maintenance(
            pg_cluster, maint_db, dagster_instance,
            {**SMALL, "lock_timeout_s": lock_timeout, "max_attempts": 2, "retry_delay_s": 0.1},
        )
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert result.success
    meta = materialization_metadata(result, "weekly_maintenance")
    objects = {(o["action"], o["object"]): o for o in meta["objects"]}
    skipped = objects[("vacuum", "public.bloated")]
    assert skipped["status"] == "skipped" and skipped["attempts"] == 2
    assert "not available within lock_timeout" in skipped["reason"]
    assert "AccessExclusiveLock" in skipped["reason"] and "pid" in skipped["reason"]  # names the holder
    assert lock_timeout * 0.8 <= skipped["longest_wait_s"] <= lock_timeout + 0.3
    # The rest finished: the odd table was vacuumed, both indexes rebuilt (bloated_pkey's REINDEX needs a
    # lock too, so it is skipped the same way).
    assert objects[("vacuum", ODD_QUALIFIED)]["status"] == "done"
    assert objects[("reindex", f"{ODD_SCHEMA}.{ODD_INDEX}")]["status"] == "done"
    assert meta["skipped"] >= 1 and meta["skipped_objects"][0].startswith("public.bloated")
    assert elapsed < 15


def test_concurrent_writer_waits_less_than_lock_timeout_and_failed_rebuild_leaves_nothing(
    pg_cluster, maint_db, dagster_instance
):
    """A reader keeps a transaction open on `hot`, so REINDEX CONCURRENTLY cannot finish (it waits for
    older transactions): the first rebuild fails on lock_timeout and leaves `hot_pkey_ccnew`. The job
    drops it and retries once the reader is gone. Meanwhile a writer updates and inserts into `hot` and is
    never made to wait as long as lock_timeout."""
    lock_timeout = 0.5
    with pg_cluster.connect(maint_db) as conn:
        conn.execute("UPDATE hot SET v = 1 WHERE id % 3 = 0")
        flush_stats(conn)
    reader = pg_cluster.connect(maint_db, autocommit=False)
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM hot").fetchone()
    with Writer(pg_cluster, maint_db) as writer:
        # End the reader only once the job's first rebuild has failed and left its copy behind.
        release_after_leftover(pg_cluster, maint_db, "hot_pkey_cc", reader.rollback, extra_delay_s=lock_timeout + 0.3)
        result = run_maintenance(
            pg_cluster, maint_db, dagster_instance,
            {"tables": ["hot", "bloated"], "indexes": ["hot_pkey"], "lock_timeout_s": lock_timeout,
             "max_attempts": 5, "retry_delay_s": 0.3},
        )
        time.sleep(0.2)
    reader.close()
    assert result.success
    meta = materialization_metadata(result, "weekly_maintenance")
    objects = {(o["action"], o["object"]): o for o in meta["objects"]}
    rebuilt = objects[("reindex", "public.hot_pkey")]
    assert rebuilt["status"] == "done" and rebuilt["attempts"] >= 2, rebuilt
    assert objects[("vacuum", "public.hot")]["status"] == "done"
    with pg_cluster.connect(maint_db) as conn:
        assert invalid_indexes(conn) == []
    assert not writer.errors
    assert len(writer.latencies) > 50
    assert max(writer.latencies) < lock_timeout, sorted(writer.latencies)[-5:]


def test_leftover_of_an_earlier_failed_rebuild_is_dropped(pg_cluster, maint_db, dagster_instance):
    leftovers = [make_leftover(pg_cluster, maint_db, "idle", "idle_pkey")]
    result = run_maintenance(pg_cluster, maint_db, dagster_instance, SMALL)
    assert result.success
    meta = materialization_metadata(result, "weekly_maintenance")
    assert meta["leftover_indexes_dropped"] == 1
    assert f"| drop | `{leftovers[0]}`" in meta["plan"]  # planned, with its rule
    assert "leftover: invalid index left by a failed REINDEX CONCURRENTLY" in meta["plan"]
    with pg_cluster.connect(maint_db) as conn:
        assert invalid_indexes(conn) == []
        assert conn.execute("SELECT count(*) FROM idle WHERE id = 5").fetchone()[0] == 1


def test_full_mode_vacuums_and_reindexes_everything(pg_cluster, maint_db, dagster_instance):
    # A leftover copy must be dropped before REINDEX DATABASE, which would make it a valid duplicate index.
    make_leftover(pg_cluster, maint_db, "idle", "idle_pkey")
    for full_reindex in ("database", "concurrently"):
        result = run_maintenance(pg_cluster, maint_db, dagster_instance, {"mode": "full", "full_reindex": full_reindex})
        assert result.success
        meta = materialization_metadata(result, "weekly_maintenance")
        assert meta["mode"] == "full"
        assert meta["tables_vacuumed"] == 4 and meta["indexes_reindexed"] == 4
        objects = {(o["action"], o["object"]): o for o in meta["objects"]}
        assert objects[("vacuum", "public.bloated")]["dead_after"] == 0
        if full_reindex == "database":
            assert meta["leftover_indexes_dropped"] == 1
            assert "REINDEX DATABASE" in meta["results"]
            assert objects[("vacuum", "public.bloated")]["dead_before"] == 9_000
            pkey = objects[("reindex", "public.bloated_pkey")]
            assert pkey["bytes_after"] < pkey["bytes_before"] / 3
        else:
            assert "REINDEX DATABASE" not in meta["results"]
    with pg_cluster.connect(maint_db) as conn:
        assert table_counters(conn)["public.bloated"][1] == 0
        assert invalid_indexes(conn) == []
        index_count = conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname !~ '^pg_'").fetchone()[0]
        assert index_count == 4


def test_bad_config_fails_naming_the_field(pg_cluster, dagster_instance):
    result = run_maintenance(pg_cluster, "postgres", dagster_instance, {"mode": "everything"})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "mode must be 'smart' or 'full'" in failure.event_specific_data.error.message
    result = run_maintenance(pg_cluster, "postgres", dagster_instance, {"vacuum_cost_delay_ms": 500})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "vacuum_cost_delay_ms must be between 0 and 100" in failure.event_specific_data.error.message

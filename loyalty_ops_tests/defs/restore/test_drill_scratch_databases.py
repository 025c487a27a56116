"""Scratch databases of drills: unique per drill, and the leftover cleanup drops only those of dead drills."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.restore import database as db
from loyalty_ops.lib.restore.plan import BackupRef, drill_database_name
from loyalty_ops.lib.restore.run import RestoreEnvironment, drop_leftover_drills, run_drill
from loyalty_ops_tests.defs.restore.conftest import databases


def environment(pg_cluster, loyalty_db, backup_dir, work_dir=None) -> RestoreEnvironment:
    spec = pg_cluster.spec(loyalty_db)
    return RestoreEnvironment(spec=spec, runner=HostToolRunner(spec), location=BackupLocation(backup_dir), work_dir=work_dir)


def test_two_drills_in_the_same_second_each_restore_and_drop_their_own_scratch_database(
    pg_cluster, loyalty_db, local_backup, backup_dir, tmp_path
):
    now = datetime.now(timezone.utc)
    # Two drills in one process share a pid, so each gets its own work directory (two processes would not need it).
    envs = [environment(pg_cluster, loyalty_db, backup_dir, tmp_path / f"work{i}") for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda env: run_drill(env, BackupRef("file", local_backup.name), now=now), envs))
    assert [r.passed for r in results] == [True, True], [r.message for r in results]
    assert results[0].scratch_database != results[1].scratch_database
    assert all(r.scratch_dropped for r in results)
    assert not {r.scratch_database for r in results} & databases(pg_cluster)


def test_leftover_cleanup_drops_only_the_scratch_databases_of_dead_drills(pg_cluster, loyalty_db, backup_dir):
    env = environment(pg_cluster, loyalty_db, backup_dir)
    now = datetime.now(timezone.utc)
    dead = "loyalty_drill_20200101_000000_0a1b2c3d"  # killed long ago
    old_style = "loyalty_drill_20200101_000001"  # named by an older version, killed long ago
    live = "loyalty_drill_20200101_000000_deadbeef"  # a long drill, still running (holds its lock)
    young = drill_database_name(now)  # just created by a concurrent drill
    impossible = "loyalty_drill_20251301_000000"  # month 13: not a drill's name
    names = [dead, old_style, live, young, impossible]
    for name in names:
        pg_cluster.create_database(name)
    holder = db.admin_connection(env.spec)
    try:
        assert db.try_lock_drill(holder, live)
        assert drop_leftover_drills(env, now) == [dead, old_style]
        assert {live, young, impossible} <= databases(pg_cluster)
        holder.close()  # the long drill died
        assert drop_leftover_drills(env, now) == [live]
        assert {young, impossible} <= databases(pg_cluster)
    finally:
        holder.close()
        for name in names:
            pg_cluster.drop_database(name)

"""Where the drill restores: another server (a second throwaway cluster, its data directory on a small tmpfs,
so its disk can be filled), or a scratch PostgreSQL the drill starts and removes. Production keeps no trace."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from devstack.postgres_cluster import LocalPostgres
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.restore.placement import DrillPlacement, run_placed_drill
from loyalty_ops.lib.restore.plan import BackupRef
from loyalty_ops.lib.restore.run import RestoreEnvironment
from loyalty_ops.lib.restore.plan import DRILL_PREFIX
from loyalty_ops_tests.defs.restore.conftest import databases, everything_under, materialize_drill
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata, mounted_tmpfs

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def drill_server():
    """A second PostgreSQL 15 cluster whose data directory is on a 160 MiB tmpfs."""
    mount = Path(tempfile.mkdtemp(prefix="loyalty-drill-disk-"))
    try:
        with mounted_tmpfs(mount, 160 * MiB, mode="0755"):
            cluster = LocalPostgres(password=f"pw-{uuid.uuid4().hex}", base_dir=mount / "cluster")
            try:
                cluster.start()
                yield cluster, mount
            finally:
                cluster.stop("immediate")
    finally:
        os.rmdir(mount)


def drill_databases(cluster) -> set[str]:
    return {d for d in databases(cluster) if d.startswith(DRILL_PREFIX)}


def server_settings(cluster, **extra) -> RestoreSettings:
    return RestoreSettings(
        drill_placement="server", drill_host="127.0.0.1", drill_port=cluster.port, drill_user=cluster.user,
        drill_password=cluster.password, **extra,
    )


def test_the_drill_restores_on_the_drill_server_and_fails_before_restoring_when_its_disk_is_full(
    restore_resources, dagster_instance, pg_cluster, local_backup, drill_server
):
    server, mount = drill_server
    resources = {**restore_resources, "restore_settings": server_settings(server)}
    result = materialize_drill(resources, dagster_instance)
    assert result.success
    meta = materialization_metadata(result, "restore_drill")
    assert meta["passed"] is True and meta["placement"] == "server" and meta["scratch_dropped"] is True
    assert f"127.0.0.1:{server.port}" in meta["drill_server"] and str(pg_cluster.port) not in meta["drill_server"]
    (volume,) = [v for v in meta["space"]["volumes"] if v["path"].startswith(str(mount))]  # its data directory
    assert volume["needs"] == {"restored database": volume["needed_bytes"]} and volume["needed_bytes"] > 1_000_000
    assert drill_databases(server) == set() and drill_databases(pg_cluster) == set()

    # Fill the drill server's disk: the drill fails at the space check, before any scratch database exists.
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    filler = mount / "filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, free - 4 * MiB)
    try:
        failed = materialize_drill(resources, dagster_instance)
    finally:
        filler.unlink()
    assert not failed.success
    meta = materialization_metadata(failed, "restore_drill")
    assert meta["passed"] is False and meta["failed_step"] == "check space", meta["message"]
    assert "not enough free space" in meta["message"] and str(mount) in meta["message"]
    assert "restored database" in meta["message"] and "Nothing was changed" in meta["message"]
    assert check_evaluations(failed)["restore_drill_matches_source"] is False
    assert drill_databases(server) == set() and drill_databases(pg_cluster) == set()


@pytest.fixture
def open_dir():
    """A directory the postgres OS user can reach (pytest's tmp_path is closed to it)."""
    with tempfile.TemporaryDirectory(prefix="loyalty-drill-scratch-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def test_the_drill_on_a_scratch_server_started_for_it_streams_and_leaves_nothing(
    restore_resources, dagster_instance, pg_cluster, local_backup, open_dir
):
    scratch_parent = open_dir / "drill-servers"
    settings = RestoreSettings(drill_placement="scratch", drill_scratch_dir=str(scratch_parent), drill_jobs=1)
    result = materialize_drill({**restore_resources, "restore_settings": settings}, dagster_instance)
    meta = materialization_metadata(result, "restore_drill")
    assert result.success, meta["message"]
    assert meta["passed"] is True and meta["placement"] == "scratch" and meta["streamed"] is True
    assert str(scratch_parent) in meta["drill_server"]  # its Unix socket lives in the scratch directory
    assert meta["timings"]["scratch_server_start_s"] > 0 and meta["rows_compared"] > 0
    assert [v["needs"] for v in meta["space"]["volumes"] if v["path"].startswith(str(scratch_parent))]  # its data directory
    assert everything_under(scratch_parent) == []  # stopped and removed
    assert drill_databases(pg_cluster) == set()


def _lib_environment(pg_cluster, loyalty_db, backup_dir):
    spec = pg_cluster.spec(loyalty_db)
    return RestoreEnvironment(spec=spec, runner=HostToolRunner(spec), location=BackupLocation(backup_dir))


def test_a_drill_server_that_cannot_be_reached_fails_the_drill_naming_it(pg_cluster, loyalty_db, local_backup):
    env = _lib_environment(pg_cluster, loyalty_db, local_backup.parent)
    unreachable = DrillPlacement("server", server=ConnectionSpec(host="127.0.0.1", port=1, user="postgres", connect_timeout=2))
    result = run_placed_drill(env, BackupRef("latest"), unreachable)
    assert not result.passed and result.failed_step == "check drill server"
    assert "127.0.0.1:1" in result.message and "not reachable" in result.message, result.message


def test_a_scratch_directory_the_server_cannot_use_fails_the_drill_saying_why(pg_cluster, loyalty_db, local_backup, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the scratch server runs as the postgres OS user only when the drill runs as root")
    os.chmod(tmp_path, 0o700)
    env = _lib_environment(pg_cluster, loyalty_db, local_backup.parent)
    result = run_placed_drill(env, BackupRef("latest"), DrillPlacement("scratch", scratch_dir=tmp_path / "closed"))
    assert not result.passed and result.failed_step == "start scratch server"
    assert "postgres OS user cannot reach" in result.message and "chmod o+x" in result.message, result.message
    assert everything_under(tmp_path / "closed") == []


def test_the_drill_settings_reach_the_resource_with_the_password_as_an_env_var_reference():
    from loyalty_ops.defs.resources import PostgresTarget
    from loyalty_ops.defs.restore.resources import restore_settings
    from loyalty_ops.defs.settings import load_settings

    settings = restore_settings(load_settings({
        "LOYALTY_DRILL_HOST": "staging-db", "LOYALTY_DRILL_PORT": "6543", "LOYALTY_DRILL_PASSWORD": "drill-secret-1",
        "LOYALTY_RESTORE_TMP_DIR": "/mnt/scratch",
    }))
    assert (settings.drill_placement, settings.drill_host, settings.drill_port, settings.tmp_dir) == ("server", "staging-db", 6543, "/mnt/scratch")
    assert settings.drill_password == "LOYALTY_DRILL_PASSWORD" and "drill-secret-1" not in repr(settings)
    placement = settings.placement(PostgresTarget(host="prod-db", user="ops", sslmode="require"))
    assert placement.kind == "server" and placement.server is not None
    assert (placement.server.host, placement.server.port, placement.server.user, placement.server.sslmode) == ("staging-db", 6543, "ops", "require")
    assert restore_settings(load_settings({})).placement(PostgresTarget()).kind == "production"

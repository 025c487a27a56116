"""Dumping from a hot standby (LOYALTY_BACKUP_SOURCE_*): the backup reads the standby, records how far
behind its primary it was, and the blocking check backup_source_lag_within_limit fails when that is over
the limit, before anything goes offsite.

A real primary and a real streaming standby (pg_basebackup -R) of PostgreSQL 15; replay is paused on the
standby to make it lag for real.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from devstack.postgres_cluster import LocalPostgres
from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage
from loyalty_ops.lib.backup.manifest import read_manifest
from loyalty_ops_tests.conftest import postgres_target, s3_resource
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata


@pytest.fixture(scope="module")
def primary_and_standby():
    password = f"pw-{uuid.uuid4().hex}"
    primary = LocalPostgres(password=password).start()
    standby_dir = Path(tempfile.mkdtemp(prefix="loyalty-standby-"))
    standby = None
    try:
        primary.create_database("loyalty")
        with primary.connect("loyalty") as conn:
            conn.execute("CREATE TABLE members (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO members SELECT g, 'm' || g FROM generate_series(1, 500) g")
        shutil.chown(standby_dir, "postgres", "postgres") if primary._as_os_user() else None
        subprocess.run(
            primary._as_os_user() + [
                f"{primary.bin_dir}/pg_basebackup", "-h", str(primary.socket_dir), "-p", str(primary.port),
                "-U", "postgres", "-D", str(standby_dir / "data"), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
            ],
            check=True, capture_output=True,
        )
        standby = LocalPostgres(password=password, base_dir=standby_dir).start()
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop("immediate")
        shutil.rmtree(standby_dir, ignore_errors=True)
        primary.destroy()


def wait_until(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for replication"
        time.sleep(0.05)


def replayed(primary: LocalPostgres, standby: LocalPostgres) -> bool:
    with primary.connect() as p, standby.connect() as s:
        lsn = p.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # with synchronous_commit off too
        return s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(lsn),)).fetchone()[0]


def backup_from_standby(primary, standby, tmp_path: Path, s3_server, **storage):
    home = tmp_path / f"home-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    resources = {
        "postgres": postgres_target(primary, "loyalty"),
        "backup_storage": BackupStorage(
            backup_dir=str(tmp_path / "backups"), source_host="127.0.0.1", source_port=standby.port, **storage
        ),
        "offsite": OffsiteStorage(s3=s3_resource(s3_server), bucket=None),
    }
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        return dg.materialize([database_backup, *BACKUP_CHECKS], resources=resources, instance=instance,
                              raise_on_error=False)


def test_a_backup_from_a_caught_up_standby_records_its_lag_and_passes(primary_and_standby, tmp_path, s3_server):
    primary, standby = primary_and_standby
    wait_until(lambda: replayed(primary, standby))
    result = backup_from_standby(primary, standby, tmp_path, s3_server)
    assert result.success
    meta = materialization_metadata(result, "database_backup")
    assert meta["source_standby"] is True and meta["source_lag_s"] == 0
    assert meta["target"].startswith("postgresql://") and str(standby.port) in meta["target"]
    assert check_evaluations(result)["backup_source_lag_within_limit"] is True
    manifest = read_manifest(Path(meta["path"]))
    assert manifest.source == {"standby": True, "lag_s": 0.0}
    assert manifest.row_counts == {"public.members": 500} and manifest.row_counts_source == "dump_stream"


def test_a_standby_too_far_behind_fails_the_blocking_check(primary_and_standby, tmp_path, s3_server):
    primary, standby = primary_and_standby
    with primary.connect("loyalty") as conn:
        conn.execute("INSERT INTO members VALUES (501, 'last replayed')")
    wait_until(lambda: replayed(primary, standby))
    with standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        wait_until(lambda: conn.execute("SELECT pg_get_wal_replay_pause_state() = 'paused'").fetchone()[0])
    try:
        time.sleep(1.5)
        with primary.connect("loyalty") as conn:
            conn.execute("INSERT INTO members VALUES (502, 'not yet on the standby')")
        with standby.connect() as conn:
            wait_until(lambda: conn.execute(
                "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()").fetchone()[0])
        result = backup_from_standby(primary, standby, tmp_path, s3_server, source_max_lag_s=1.0)
    finally:
        with standby.connect() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")
    meta = materialization_metadata(result, "database_backup")
    assert meta["source_standby"] is True and meta["source_lag_s"] >= 1.5
    assert check_evaluations(result)["backup_source_lag_within_limit"] is False
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "backup_source_lag_within_limit")
    assert "over the 1 s limit" in evaluation.description and "LOYALTY_BACKUP_SOURCE_MAX_LAG_S" in evaluation.description
    # what the lag means: the primary's last row is not in this backup
    assert read_manifest(Path(meta["path"])).row_counts == {"public.members": 501}


def test_dumped_from_the_primary_the_check_passes(primary_and_standby, tmp_path, s3_server):
    primary, _ = primary_and_standby
    resources = {
        "postgres": postgres_target(primary, "loyalty"),
        "backup_storage": BackupStorage(backup_dir=str(tmp_path / "backups")),
        "offsite": OffsiteStorage(s3=s3_resource(s3_server), bucket=None),
    }
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([database_backup, *BACKUP_CHECKS], resources=resources, instance=instance)
    meta = materialization_metadata(result, "database_backup")
    assert meta["source_standby"] is False and "source_lag_s" not in meta
    assert check_evaluations(result)["backup_source_lag_within_limit"] is True

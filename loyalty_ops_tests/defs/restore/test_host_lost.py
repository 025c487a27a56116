"""The guide's worst day, end to end: the database host is gone. A cluster whose loyalty database belongs to
an application role (password auth) with a read-only role is backed up to S3 by the nightly job; then the
cluster and the backup directory are destroyed, and a new empty cluster with a fresh Dagster home (a new ops
box that has only the configuration) is restored by ``restore_job`` in ``new_server`` mode from S3 alone."""

from __future__ import annotations

import shutil
import time
import uuid

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from devstack.postgres_cluster import LocalPostgres
from devstack.sample_data import create_sample_schema
from loyalty_ops.definitions import defs
from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops_tests.conftest import postgres_target, s3_resource
from loyalty_ops_tests.helpers import table_fingerprints

APP, RO = "loyalty_app", "loyalty_ro"
APP_PASSWORD, RO_PASSWORD = "app-pass-7f3a", "ro-pass-91c2"


def _login(cluster: LocalPostgres, user: str, password: str, database: str = "loyalty") -> psycopg.Connection:
    return psycopg.connect(**{**cluster.spec(database).psycopg_kwargs(), "user": user, "password": password}, autocommit=True)


def _sequences(cluster: LocalPostgres) -> dict[str, tuple[int, bool]]:
    with cluster.connect("loyalty") as conn:
        names = [r[0] for r in conn.execute("SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences").fetchall()]
        return {n: conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(n))).fetchone() for n in names}


def _make_source(cluster: LocalPostgres) -> None:
    with cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(APP), sql.Literal(APP_PASSWORD)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(RO), sql.Literal(RO_PASSWORD)))
        conn.execute(sql.SQL("CREATE DATABASE loyalty OWNER {}").format(sql.Identifier(APP)))
        conn.execute("REVOKE ALL ON DATABASE loyalty FROM PUBLIC")
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE loyalty TO {}").format(sql.Identifier(RO)))
        conn.execute("ALTER DATABASE loyalty SET work_mem TO '8MB'")
    with _login(cluster, APP, APP_PASSWORD) as conn:
        create_sample_schema(conn, 0.02)  # small: this proves roles, grants, passwords and sequences, not size
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(RO)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(RO)))
        conn.execute("SELECT nextval('tenants_id_seq')")  # a sequence ahead of its table's data


def _offsite(s3_server, bucket: str) -> OffsiteStorage:
    return OffsiteStorage(s3=s3_resource(s3_server), bucket=bucket, prefix="dr/")


def test_host_lost_restore_onto_a_new_server_from_s3_alone(tmp_path, s3_server, s3_bucket):
    source = LocalPostgres(password=f"old-{uuid.uuid4().hex}").start()
    new = None
    try:
        _make_source(source)
        backup_dir = tmp_path / "old-box" / "backups"
        backup_dir.mkdir(parents=True)
        resources = {
            "postgres": postgres_target(source, "loyalty"),
            "backup_storage": BackupStorage(backup_dir=str(backup_dir)),
            "offsite": _offsite(s3_server, s3_bucket),
            "restore_settings": RestoreSettings(drill_every_n_backups="0"),
        }
        (tmp_path / "old-home").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "old-home")) as instance:
            # The nightly job's backup, its blocking checks and the offsite copy (its drills are tested elsewhere).
            backup = dg.materialize(
                [database_backup, offsite_backup_copy, *BACKUP_CHECKS], resources=resources, instance=instance
            )
        assert backup.success
        fingerprints, sequences = table_fingerprints(source, "loyalty"), _sequences(source)
        assert len(fingerprints) == 5 and sequences

        # The host is gone: its cluster, its disk, the backups on it, and the old ops box's Dagster history.
        source.destroy()
        shutil.rmtree(tmp_path / "old-box")
        new = LocalPostgres(password=f"new-{uuid.uuid4().hex}").start()
        started = time.monotonic()
        (tmp_path / "new-home").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "new-home")) as instance:
            restored = defs.resolve_job_def("restore_job").execute_in_process(
                run_config={"ops": {"restore_database": {"config": {"mode": "new_server", "progress_interval_seconds": 1.0}}}},
                resources={
                    **resources,
                    "postgres": postgres_target(new, "loyalty"),
                    "backup_storage": BackupStorage(backup_dir=str(tmp_path / "new-box" / "backups")),
                },
                instance=instance,
            )
        rto = time.monotonic() - started
        assert restored.success
        summary = restored.output_for_node("restore_database")
        (output,) = [e for e in restored.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
        timings = output.event_specific_data.metadata["timings"].value
        print(f"\nhost lost -> loyalty serving again on a new server: RTO {rto:.1f} s (restore_job rto_s "
              f"{summary['rto_s']} s); steps: {timings}")
        assert summary["downloaded_from_s3"] is True and summary["role_passwords"] is True
        assert summary["roles_created"] == 2 and summary["roles_left_as_they_were"] == 1  # postgres, left alone
        assert summary["database_owner"] == APP and summary["target_database"] == "loyalty"

        # Every table's data and every sequence equal the source.
        assert table_fingerprints(new, "loyalty") == fingerprints
        assert _sequences(new) == sequences
        # The new server's own superuser was left as it was (its password still works).
        with new.connect("loyalty") as conn:
            owners = {r[0] for r in conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")}
            assert owners == {APP}
            conn.execute("CREATE ROLE stranger LOGIN PASSWORD 'x'")
            assert conn.execute("SELECT has_database_privilege('stranger', 'loyalty', 'CONNECT')").fetchone()[0] is False
        # Both roles log in with their old passwords; the app reads and writes, the read-only role only reads.
        with _login(new, APP, APP_PASSWORD) as conn:
            assert conn.execute("SHOW work_mem").fetchone()[0] == "8MB"
            assert conn.execute("SELECT count(*) FROM members").fetchone()[0] > 0
            new_id = conn.execute("INSERT INTO tenants (name) VALUES ('after the fire') RETURNING id").fetchone()[0]
            assert new_id == sequences["public.tenants_id_seq"][0] + 1
        with _login(new, RO, RO_PASSWORD) as conn:
            assert conn.execute("SELECT count(*) FROM tenants WHERE name = 'after the fire'").fetchone()[0] == 1
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO tenants (name) VALUES ('not allowed')")
        with pytest.raises(psycopg.OperationalError):
            _login(new, APP, "wrong password").close()
    finally:
        source.destroy()
        if new is not None:
            new.destroy()

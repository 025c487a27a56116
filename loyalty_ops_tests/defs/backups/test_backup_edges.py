"""Odd identifiers, killed dumps, clear errors and secrets: the backup's behaviour off the happy path."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from psycopg import sql

from devstack.postgres_cluster import LocalPostgres, free_port
from devstack.sample_data import create_sample_schema
from loyalty_ops.definitions import defs
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage
from loyalty_ops.lib.backup.dump import BackupError, BackupRequest, take_backup
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops_tests.conftest import postgres_target, s3_resource
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata, schema_dump, table_fingerprints

ODD_NAMES = ['Members "VIP"', "points ledger", "MixedCase", "naïve_ünïcode_表", "semi;colon"]


def run_job(resources, instance, raise_on_error=False):
    return defs.resolve_job_def("nightly_backup_job").execute_in_process(
        resources=resources, instance=instance, raise_on_error=raise_on_error
    )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "expected a failed step"
    return " ".join(str(e.event_specific_data.error.message) for e in failures)


def test_odd_identifiers_survive_backup_and_restore(pg_cluster, make_database, ops_resources, dagster_instance):
    db = make_database("odd", sample_scale=None)
    with pg_cluster.connect(db) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier("Odd Schema")))
        for i, name in enumerate(ODD_NAMES):
            schema = "Odd Schema" if i % 2 else "public"
            table = sql.Identifier(schema, name)
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {} text)").format(table, sql.Identifier("Välue col")))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'v' || g FROM generate_series(1, {}) g").format(table, sql.Literal(i + 3)))
    resources = {**ops_resources, "postgres": postgres_target(pg_cluster, db)}
    result = run_job(resources, dagster_instance, raise_on_error=True)
    assert all(check_evaluations(result).values())
    meta = materialization_metadata(result, "database_backup")
    assert meta["row_counts"]['public.Members "VIP"'] == 3
    assert meta["row_counts"]["Odd Schema.points ledger"] == 4
    target = make_database("odd_restored", sample_scale=None)
    env = {"PATH": "/usr/bin:/bin", **pg_cluster.env(target)}
    restore = subprocess.run(
        f"gunzip -c '{meta['path']}' | {pg_cluster.bin_dir}/pg_restore --exit-on-error -d \"$PGDATABASE\"",
        shell=True, env=env, capture_output=True, text=True,
    )
    assert restore.returncode == 0, restore.stderr
    assert table_fingerprints(pg_cluster, target) == table_fingerprints(pg_cluster, db)
    assert schema_dump(pg_cluster, target) == schema_dump(pg_cluster, db)


class RecordingRunner(HostToolRunner):
    """The real host runner, remembering the processes it started so a test can kill one."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = []

    def start(self, tool, args, **kwargs):
        proc = super().start(tool, args, **kwargs)
        self.started.append((tool, proc))
        return proc


@pytest.fixture(scope="module")
def big_db(pg_cluster):
    """A database big enough (~15 MB of dump) that a dump can be interrupted half-way."""
    name = f"big_{uuid.uuid4().hex[:6]}"
    pg_cluster.create_database(name)
    with pg_cluster.connect(name) as conn:
        create_sample_schema(conn, 1.0)
    yield name
    pg_cluster.drop_database(name)


def test_killed_pg_dump_leaves_no_file(pg_cluster, big_db, tmp_path):
    spec = pg_cluster.spec(big_db)
    runner = RecordingRunner(spec)
    killed = []

    def kill_on_first_progress(_snapshot):
        if not killed:
            dump = next(proc for tool, proc in runner.started if tool == "pg_dump")
            os.kill(dump.pid, signal.SIGKILL)
            killed.append(dump.pid)

    with pytest.raises(BackupError, match="pg_dump failed with exit code -9"):
        take_backup(spec, runner, BackupRequest(tmp_path, progress_interval_s=0), on_progress=kill_on_first_progress)
    assert killed
    assert list(tmp_path.iterdir()) == []


def test_server_stopped_mid_dump_leaves_no_file(tmp_path):
    with LocalPostgres(password="pw-stop-test") as cluster:
        cluster.create_database("loyalty")
        with cluster.connect("loyalty") as conn:
            create_sample_schema(conn, 1.0)
        stopped = []

        def stop_server(_snapshot):
            if not stopped:
                stopped.append(True)
                cluster.stop("immediate")

        out = tmp_path / "out"
        with pytest.raises(BackupError) as excinfo:
            take_backup(cluster.spec("loyalty"), HostToolRunner(cluster.spec("loyalty")),
                        BackupRequest(out, progress_interval_s=0), on_progress=stop_server)
        assert stopped
        assert "pg_dump failed" in str(excinfo.value) or "counting rows" in str(excinfo.value)
        assert list(out.iterdir()) == []


def test_unreachable_database_fails_with_clear_message(ops_resources, dagster_instance, backup_dir):
    resources = {**ops_resources, "postgres": postgres_target_unreachable()}
    result = run_job(resources, dagster_instance)
    assert not result.success
    message = failure_message(result)
    assert "cannot connect to postgresql://postgres@127.0.0.1:" in message and "PGHOST" in message
    assert list(backup_dir.iterdir()) == []


def postgres_target_unreachable():
    from loyalty_ops.defs.resources import PostgresTarget

    return PostgresTarget(host="127.0.0.1", port=free_port(), user="postgres", password="x", database="loyalty")


def test_missing_bucket_fails_with_clear_message(ops_resources, dagster_instance, s3_server):
    resources = {**ops_resources, "offsite": OffsiteStorage(s3=s3_resource(s3_server), bucket="no-such-bucket-here")}
    result = run_job(resources, dagster_instance)
    assert not result.success
    assert "bucket 'no-such-bucket-here' does not exist" in failure_message(result)


def test_wrong_credentials_fail_with_clear_message(ops_resources, dagster_instance, tmp_path):
    """A second moto server with IAM auth enforced: the test credentials are unknown to it."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [str(Path(os.sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        import urllib.request

        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError as exc:
                if getattr(exc, "code", None):
                    break
                time.sleep(0.2)
        from dagster_aws.s3 import S3Resource

        s3 = S3Resource(endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="AKIAWRONGKEY", aws_secret_access_key="wrong-secret", max_attempts=1)
        resources = {**ops_resources, "offsite": OffsiteStorage(s3=s3, bucket="some-bucket")}
        result = run_job(resources, dagster_instance)
        assert not result.success
        message = failure_message(result)
        assert "refused the credentials" in message and "AWS_ACCESS_KEY_ID" in message
        assert "wrong-secret" not in message
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("make_dir", ["parent_is_file", "proc"])
def test_unwritable_backup_dir_fails_before_dumping(ops_resources, dagster_instance, tmp_path, make_dir):
    if make_dir == "parent_is_file":
        (tmp_path / "afile").write_text("x")
        path = tmp_path / "afile" / "backups"
    else:
        path = Path("/proc/loyalty-backups")  # procfs: even root cannot create it
    resources = {**ops_resources, "backup_storage": BackupStorage(backup_dir=str(path))}
    result = run_job(resources, dagster_instance)
    assert not result.success
    message = failure_message(result)
    assert "LOYALTY_BACKUP_DIR" in message and str(path) in message


def test_pg_dump_older_than_server_is_refused():
    from loyalty_ops.lib.backup.dump import check_tool_versions

    with pytest.raises(BackupError, match=r"pg_dump 14\.9 is older than the server \(PostgreSQL 15\.4\)"):
        check_tool_versions("pg_dump (PostgreSQL) 14.9", (15, 4))
    check_tool_versions("pg_dump (PostgreSQL) 16.1", (15, 4))


def test_password_never_reaches_events_metadata_or_argv(pg_cluster, loyalty_db, ops_resources, dagster_instance):
    secret = pg_cluster.password
    seen_cmdlines: list[str] = []
    stop = threading.Event()

    def sample_process_table():
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            seen_cmdlines.append(fh.read().replace(b"\0", b" ").decode(errors="replace"))
                    except OSError:
                        pass
            time.sleep(0.01)

    sampler = threading.Thread(target=sample_process_table, daemon=True)
    sampler.start()
    try:
        result = run_job(ops_resources, dagster_instance, raise_on_error=True)
    finally:
        stop.set()
        sampler.join()
    assert any("pg_dump" in line for line in seen_cmdlines), "the sampler never saw pg_dump running"
    assert not [line for line in seen_cmdlines if secret in line]
    records = dagster_instance.all_logs(result.run_id)
    assert records
    for record in records:
        assert secret not in str(record.user_message)
        if record.dagster_event is not None:
            assert secret not in repr(record.dagster_event)
    run = dagster_instance.get_run_by_id(result.run_id)
    assert secret not in repr(run.run_config) and secret not in repr(run.tags)

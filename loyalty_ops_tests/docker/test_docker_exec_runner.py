"""pg_dump, pg_restore and psql through `exec` in a real container (podman's Docker API)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from dagster_aws.s3 import S3Resource

from loyalty_ops.definitions import defs
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.lib.backup import integrity
from loyalty_ops.lib.backup.dump import BackupError, BackupRequest, take_backup
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.docker_runner import ContainerError, DockerExecToolRunner
from loyalty_ops.lib.pg.tools import ToolError, run_tool
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata, schema_dump, table_fingerprints

pytestmark = pytest.mark.docker


def feed_decompressed(path: Path, sink: IO[bytes]) -> None:
    """Write the decompressed archive into ``sink`` (a tool's stdin); stops quietly when the reader hangs up."""
    try:
        for block in integrity.iter_decompressed(path):
            sink.write(block)
    except (BrokenPipeError, ConnectionResetError, OSError) as exc:
        if not isinstance(exc, (BrokenPipeError, ConnectionResetError)) and getattr(exc, "errno", None) != 32:
            raise
    finally:
        try:
            sink.close()
        except OSError:
            pass


def start_feeder(path: Path, sink: IO[bytes]) -> threading.Thread:
    """Feed the decompressed archive into ``sink`` from a thread; its ``.errors`` holds what went wrong."""
    errors: list[BaseException] = []

    def _run() -> None:
        try:
            feed_decompressed(path, sink)
        except BaseException as exc:  # reported by the caller through .errors
            errors.append(exc)

    thread = threading.Thread(target=_run, name="archive-feeder", daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def _restore_on_host(pg_cluster, target: str, path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", **pg_cluster.env(target)}
    proc = subprocess.Popen(
        [f"{pg_cluster.bin_dir}/pg_restore", "--exit-on-error", "--no-owner", "-d", target],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    feeder = start_feeder(path, proc.stdin)
    err = proc.stderr.read()
    proc.wait()
    feeder.join()
    assert proc.returncode == 0, err.decode()


def test_backup_through_exec_restores_equal_on_host(db_container, pg_cluster, make_database, backup_dir):
    runner = db_container.runner("loyalty")
    result = take_backup(db_container.spec("loyalty"), runner, BackupRequest(backup_dir=backup_dir, compression="zstd"))
    assert result.runner.startswith(f"docker exec in container {db_container.name}")
    assert result.pg_dump_version.startswith("pg_dump (PostgreSQL) 15.")
    assert result.path.exists() and integrity.file_sha256(result.path) == result.file.sha256
    assert result.row_counts["public.events"] > 0
    target = make_database("from_container", sample_scale=None)
    _restore_on_host(pg_cluster, target, result.path)
    assert table_fingerprints(pg_cluster, target) == table_fingerprints(db_container, "loyalty")
    assert schema_dump(pg_cluster, target) == schema_dump(db_container, "loyalty")


def test_restore_streams_into_exec(db_container, backup_dir):
    runner = db_container.runner("loyalty")
    backup = take_backup(db_container.spec("loyalty"), runner, BackupRequest(backup_dir=backup_dir))
    target = f"restored_{int(time.time() * 1000)}"
    run_tool(runner, "psql", ["-X", "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{target}"'], database="postgres")
    try:
        proc = runner.start("pg_restore", ["--exit-on-error", "--no-owner", f"--dbname={target}"], database=target,
                            stdin=True, stdout=False)
        feeder = start_feeder(backup.path, proc.stdin)
        code = proc.wait(timeout=120)
        feeder.join()
        assert code == 0, proc.stderr_text()
        assert not feeder.errors
        assert table_fingerprints(db_container, target) == table_fingerprints(db_container, "loyalty")
    finally:
        run_tool(runner, "psql", ["-X", "-c", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)'], database="postgres")


def test_table_of_contents_through_exec_is_whole_every_time(db_container, backup_dir):
    """pg_restore --list through exec, 40 times in a row: every listing whole. Fed the archive until pg_restore
    stopped reading (past its table of contents), about 1 listing in 25 came back empty with exit code 0: the
    engine ended the exec on the failed write to the tool's stdin before copying its output."""
    runner = db_container.runner("loyalty")
    backup = take_backup(db_container.spec("loyalty"), runner, BackupRequest(backup_dir=backup_dir))
    for attempt in range(40):
        text, error = integrity.list_toc(backup.path, runner.start("pg_restore", ["--list"], stdin=True, stdout=True))
        assert error is None, f"listing {attempt + 1}: {error}"
        assert integrity.missing_from_toc(text, backup.tables) == [], f"listing {attempt + 1}"
        assert integrity.toc_entry_count(text) > 40


def test_backup_job_with_docker_runner_and_restore_drill(db_container, dagster_instance, backup_dir):
    resources = {
        "postgres": PostgresTarget(
            host="127.0.0.1", port=db_container.port, user="postgres", password=db_container.password,
            database="loyalty", runner="docker", container=db_container.name, docker_host=db_container.engine.base_url,
        ),
        "backup_storage": BackupStorage(backup_dir=str(backup_dir)),
        "offsite": OffsiteStorage(s3=S3Resource(region_name="us-east-1")),
        "restore_settings": RestoreSettings(drill_every_n_backups="1"),
    }
    job = defs.resolve_job_def("nightly_backup_job")
    result = job.execute_in_process(resources=resources, instance=dagster_instance, raise_on_error=True)
    assert result.success
    meta = materialization_metadata(result, "database_backup")
    assert meta["runner"].startswith(f"docker exec in container {db_container.name}")
    assert Path(meta["path"]).parent == backup_dir
    checks = check_evaluations(result)
    assert checks and all(checks.values()), checks  # pg_restore --list ran through exec too
    drill = materialization_metadata(result, "restore_drill")  # pg_restore FILE: streamed into the exec
    assert drill["passed"] is True, drill
    assert db_container.password not in json.dumps(meta)


def _exec_state_contains(db_container, exec_id: str, secret: str) -> bool:
    """Whether podman's on-disk state for one exec session (its OCI process spec etc.) holds ``secret``."""
    container_id = db_container.engine.client().containers.get(db_container.name).id
    exec_dir = db_container.engine.storage_root / "vfs-containers" / container_id / "userdata" / exec_id
    assert exec_dir.is_dir(), f"podman keeps no state for exec {exec_id} at {exec_dir}"
    return any(secret.encode() in path.read_bytes() for path in exec_dir.rglob("*") if path.is_file())


def test_password_not_in_exec_configuration(db_container):
    runner = db_container.runner("loyalty")
    # Control: a value passed in an exec's environment does land in the engine's state.
    canary = f"canary-{time.time_ns()}"
    api = runner.client().api
    exec_id = api.exec_create(db_container.name, ["sleep", "1"], environment={"CANARY": canary})["Id"]
    api.exec_start(exec_id, detach=True)
    time.sleep(0.3)
    assert _exec_state_contains(db_container, exec_id, f"CANARY={canary}")

    proc = runner.start("psql", ["-X", "-At", "-c", "SELECT pg_sleep(1.5), current_setting('port')"])
    inspect = api.exec_inspect(proc.exec_id)
    # (The container's own POSTGRES_PASSWORD is in every exec's inherited environment: that copy is the
    # deployment's, not ours.)
    leaked = _exec_state_contains(db_container, proc.exec_id, f"PGPASSWORD={db_container.password}")
    out = proc.stdout.read()
    assert proc.wait() == 0, proc.stderr_text()
    assert out.strip().endswith(str(db_container.port).encode())
    assert not leaked
    assert db_container.password not in json.dumps(inspect)
    assert "PGPASSWORD" not in runner.exec_environment("loyalty")


def test_pg_dump_failure_inside_container_carries_stderr_and_leaves_no_file(db_container, backup_dir):
    runner = db_container.runner("loyalty")
    with pytest.raises(ToolError) as raised:
        run_tool(runner, "pg_dump", ["--format=custom"], database="no_such_db")
    assert raised.value.returncode == 1
    assert 'database "no_such_db" does not exist' in raised.value.stderr
    assert 'database "no_such_db" does not exist' in str(raised.value)

    class WrongDatabaseInside:
        """The real runner, but the tool inside the container is pointed at a database that is not there."""

        description = runner.description

        def start(self, tool, args, *, database=None, **kwargs):
            return runner.start(tool, args, database="no_such_db", **kwargs)

        def tool_version(self, tool):
            return runner.tool_version(tool)

    with pytest.raises(BackupError) as failed:
        take_backup(db_container.spec("loyalty"), WrongDatabaseInside(), BackupRequest(backup_dir=backup_dir))
    message = str(failed.value)
    assert "pg_dump failed with exit code 1" in message
    assert 'database "no_such_db" does not exist' in message
    assert "no backup file was written" in message
    assert list(backup_dir.iterdir()) == []


def test_stopped_container_is_a_clear_error(db_container, stopped_container, backup_dir):
    runner = DockerExecToolRunner(db_container.spec("loyalty"), stopped_container, docker_host=db_container.engine.base_url)
    with pytest.raises(ContainerError, match=rf"container '{stopped_container}' is exited \(exit code 3\), not running"):
        runner.start("pg_dump", ["--format=custom"])
    with pytest.raises(ToolError, match="not running"):
        take_backup(db_container.spec("loyalty"), runner, BackupRequest(backup_dir=backup_dir))
    assert list(backup_dir.iterdir()) == []


def test_missing_container_and_unreachable_engine_are_clear_errors(db_container, tmp_path):
    spec = db_container.spec("loyalty")
    missing = DockerExecToolRunner(spec, "loyalty-db-nowhere", docker_host=db_container.engine.base_url)
    with pytest.raises(ContainerError, match="container 'loyalty-db-nowhere' not found"):
        missing.tool_version("pg_dump")
    dead = DockerExecToolRunner(spec, db_container.name, docker_host=f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(ContainerError, match=f"cannot reach the Docker engine at unix://{tmp_path}/no-engine.sock"):
        dead.start("pg_dump", [])


def test_exec_host_override_and_local_socket(db_container):
    # The compose case: from the host the server is at one address, inside the container at another.
    wrong_from_inside = ConnectionSpec(host="10.255.255.1", port=1, user="postgres", password=db_container.password,
                                       dbname="loyalty", connect_timeout=2)
    tcp = DockerExecToolRunner(wrong_from_inside, db_container.name, docker_host=db_container.engine.base_url,
                               exec_host="127.0.0.1", exec_port=db_container.port)
    assert run_tool(tcp, "psql", ["-X", "-At", "-c", "SELECT 1"]).stdout.strip() == b"1"
    local = DockerExecToolRunner(wrong_from_inside, db_container.name, docker_host=db_container.engine.base_url,
                                 exec_host="local", exec_port=db_container.port)
    out = run_tool(local, "psql", ["-X", "-At", "-c", "SELECT coalesce(inet_server_addr()::text, 'socket')"]).stdout
    assert out.strip() == b"socket"


def test_host_archive_argument_is_streamed_and_jobs_dropped(tmp_path):
    from loyalty_ops.lib.pg.docker_runner import host_archive_argument

    archive = tmp_path / "x.dump"
    archive.write_bytes(b"PGDMP")
    assert host_archive_argument(["--exit-on-error", "--jobs=2", "--dbname=d", str(archive)]) == (
        str(archive), ["--exit-on-error", "--dbname=d"])
    assert host_archive_argument(["-j", "4", "-d", "d", str(archive)]) == (str(archive), ["-d", "d"])
    assert host_archive_argument(["--list"]) == (None, ["--list"])
    assert host_archive_argument(["-d", "mydb"]) == (None, ["-d", "mydb"])
    assert host_archive_argument(["/in/the/container.dump"]) == (None, ["/in/the/container.dump"])


def test_kill_stops_the_tool_inside_the_container(db_container):
    runner = db_container.runner("loyalty")
    proc = runner.start("psql", ["-X", "-c", "SELECT pg_sleep(60)"])
    api = runner.client().api
    deadline = time.monotonic() + 10
    with db_container.connect() as conn:
        while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'").fetchone()[0]:
            assert time.monotonic() < deadline, "psql never started its query"
            time.sleep(0.1)
        started = time.monotonic()
        proc.kill()
        assert time.monotonic() - started < 5
        assert not api.exec_inspect(proc.exec_id)["Running"]
        assert proc.wait(timeout=10) != 0
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'")


def test_backup_job_fails_clearly_when_the_container_is_stopped(db_container, stopped_container, dagster_instance, backup_dir):
    resources = {
        "postgres": PostgresTarget(
            host="127.0.0.1", port=db_container.port, user="postgres", password=db_container.password,
            database="loyalty", runner="docker", container=stopped_container, docker_host=db_container.engine.base_url,
        ),
        "backup_storage": BackupStorage(backup_dir=str(backup_dir)),
        "offsite": OffsiteStorage(s3=S3Resource(region_name="us-east-1")),
        "restore_settings": RestoreSettings(drill_every_n_backups="1"),
    }
    result = defs.resolve_job_def("nightly_backup_job").execute_in_process(
        resources=resources, instance=dagster_instance, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.event_specific_data.error
    # Today database_backup turns only BackupError/ValueError into dg.Failure, so the runner's error is the
    # step error's cause; either way its message is what the UI shows for the failed step.
    message = error.message + (error.cause.message if error.cause else "")
    assert f"container '{stopped_container}' is exited (exit code 3), not running" in message
    assert list(backup_dir.iterdir()) == []

"""A managed-service-like target: TLS only (``hostssl``), ``verify-full`` against our own CA, and the
password in a passfile with no ``PGPASSWORD``. The whole nightly job (psycopg, pg_dump, pg_restore) must
reach it with the settings the README documents, taken from the environment as in production."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from devstack.postgres_cluster import LocalPostgres
from devstack.sample_data import create_sample_schema
from loyalty_ops.definitions import defs
from loyalty_ops.defs.settings import load_settings
from loyalty_ops.defs.shared_resources import postgres_target
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.lib.pg.tools import HostToolRunner, run_tool
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for localhost and 127.0.0.1."""
    directory.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=loyalty-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
             "-out", "server.csr", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=directory)
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    cluster = LocalPostgres(password=f"pw-{uuid.uuid4().hex}")
    cluster.start()
    try:
        ca, cert, key = make_certificates(cluster.base_dir / "tls")
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (cert.parent, cert, key):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        key.chmod(0o600)
        with cluster.connect() as conn:
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute(f"ALTER SYSTEM SET ssl_cert_file = '{cert}'")
            conn.execute(f"ALTER SYSTEM SET ssl_key_file = '{key}'")
        hba = cluster.data_dir / "pg_hba.conf"
        hba.write_text("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        with cluster.connect() as conn:  # over the socket: trust
            conn.execute("SELECT pg_reload_conf()")
        cluster.create_database("loyalty")
        with psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, user=cluster.user, dbname="loyalty",
                             autocommit=True) as conn:
            create_sample_schema(conn, 0.05)
        yield cluster, ca
    finally:
        cluster.destroy()


@pytest.fixture
def tls_environment(tls_cluster, tmp_path, monkeypatch) -> dict[str, str]:
    cluster, ca = tls_cluster
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{cluster.port}:*:{cluster.user}:{cluster.password}\n")
    passfile.chmod(0o600)
    for name in [n for n in os.environ if n.startswith("PG")]:
        monkeypatch.delenv(name)  # nothing may come from the test process's own environment
    return {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(cluster.port),
        "PGUSER": cluster.user,
        "PGDATABASE": "loyalty",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(ca),
        "PGPASSFILE": str(passfile),
    }


def test_the_server_refuses_what_is_not_tls(tls_cluster, tls_environment):
    cluster, _ca = tls_cluster
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=cluster.port, user=cluster.user, password=cluster.password,
                        dbname="loyalty", sslmode="disable", connect_timeout=5)
    # verify-full without the CA fails: the settings below are really needed.
    wrong_ca = {**tls_environment, "PGSSLROOTCERT": str(Path(tls_environment["PGPASSFILE"]).parent / "none.crt")}
    spec = postgres_target(load_settings(wrong_ca)).spec()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**spec.psycopg_kwargs())


def test_driver_and_tools_use_the_same_settings(tls_environment):
    target = postgres_target(load_settings(tls_environment))
    spec = target.spec()
    assert spec.password is None
    kwargs = spec.psycopg_kwargs()
    env = spec.libpq_env()
    assert kwargs["sslrootcert"] == env["PGSSLROOTCERT"] == tls_environment["PGSSLROOTCERT"]
    assert kwargs["passfile"] == env["PGPASSFILE"] == tls_environment["PGPASSFILE"]
    assert kwargs["sslmode"] == env["PGSSLMODE"] == "verify-full"
    assert kwargs["application_name"] == env["PGAPPNAME"] == "loyalty_ops"
    with psycopg.connect(**kwargs) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
    out = run_tool(HostToolRunner(spec), "psql", ["-XAtc", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
    assert out.stdout.strip() in ("t", b"t"), out


def test_nightly_job_backs_up_and_drills_a_tls_only_server_with_a_passfile(
    tls_environment, dagster_instance, backup_dir, s3_server, s3_bucket
):
    from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage
    from loyalty_ops_tests.conftest import s3_resource

    resources = {
        "postgres": postgres_target(load_settings(tls_environment)),
        "backup_storage": BackupStorage(backup_dir=str(backup_dir)),
        "offsite": OffsiteStorage(s3=s3_resource(s3_server), bucket=s3_bucket, prefix="backups/"),
        "restore_settings": RestoreSettings(),
    }
    job = defs.resolve_job_def("nightly_backup_job")
    result = job.execute_in_process(resources=resources, instance=dagster_instance, raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert all(check_evaluations(result).values())
    assert materialization_metadata(result, "database_backup")["total_rows"] > 0
    assert materialization_metadata(result, "offsite_backup_copy")["verified"] is True
    assert materialization_metadata(result, "restore_drill")["passed"] is True

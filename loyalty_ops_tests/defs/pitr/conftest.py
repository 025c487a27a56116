"""One archiving PostgreSQL cluster per module: archive_mode on, archive_command = barman-cloud-wal-archive to
moto's S3 through a fault proxy (so a test can take S3 away from the archiver), a tiny loyalty database, and one
base backup taken by weekly_base_backup_job; WAL and base backup compressed as the settings do by default.
archive_timeout stays at 60 s: the tests switch the WAL themselves where they need it, so recoveries replay a
handful of segments (one engine process each), not one per second."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest

from devstack.postgres_cluster import LocalPostgres, archiving_settings, server_engine_dir
from devstack.s3_endpoint import LOCAL_CREDENTIALS
from loyalty_ops.defs.pitr.resources import PitrResource
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.lib.pitr.engine import S3Access, archive_command
from loyalty_ops.lib.pitr.location import PitrLocation
from loyalty_ops_tests.s3_fault_proxy import S3FaultProxy

from dagster_aws.s3 import S3Resource

ARCHIVE_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def s3_proxy(s3_server) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def pitr_bucket(s3_server) -> str:
    name = f"loyalty-pitr-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def pitr_location(pitr_bucket) -> PitrLocation:
    return PitrLocation.of(pitr_bucket, "pitr/", "loyalty")


@pytest.fixture(scope="module")
def s3_access(s3_proxy) -> S3Access:
    credentials = {k: v for k, v in LOCAL_CREDENTIALS.items() if k != "AWS_REGION"}
    return S3Access(endpoint_url=s3_proxy.endpoint_url, region=LOCAL_CREDENTIALS["AWS_REGION"], sse="AES256",
                    credentials=credentials)


@pytest.fixture(scope="module")
def archiving_cluster(pitr_location, s3_access) -> Iterator[LocalPostgres]:
    # The options the settings give by default (zstd, nice): the command wal_archive_settings generates.
    options = pitr_test_resource().archive_options()
    command = archive_command(server_engine_dir(), pitr_location, s3_access, options)
    cluster = LocalPostgres(password=f"pw-{uuid.uuid4().hex}",
                            settings=archiving_settings(command, ARCHIVE_TIMEOUT_S, options.server_wal_compression),
                            environment=s3_access.env())
    cluster.start()
    try:
        cluster.create_database("loyalty")
        with cluster.connect("loyalty") as conn:
            conn.execute("CREATE TABLE points_ledger (id int PRIMARY KEY, member text, points int, "
                         "written_at timestamptz NOT NULL DEFAULT clock_timestamp())")
            conn.execute("INSERT INTO points_ledger (id, member, points) SELECT g, 'm' || g, g FROM generate_series(1, 1000) g")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def pitr_resources(archiving_cluster, s3_proxy, pitr_bucket, tmp_path_factory) -> dict:
    s3 = S3Resource(endpoint_url=s3_proxy.endpoint_url, region_name=LOCAL_CREDENTIALS["AWS_REGION"],
                    aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], max_attempts=2)
    return {
        "postgres": PostgresTarget(host="127.0.0.1", port=archiving_cluster.port, user=archiving_cluster.user,
                                   password=archiving_cluster.password, database="loyalty"),
        "backup_storage": BackupStorage(backup_dir=str(tmp_path_factory.mktemp("pitr-backups"))),
        "offsite": OffsiteStorage(s3=s3, bucket=pitr_bucket, prefix="backups/"),
        "pitr": pitr_test_resource(),
    }


def pitr_test_resource(**overrides) -> PitrResource:
    """PITR on, to the module's prefix; small and quick settings for a test cluster."""
    values = dict(enabled=True, prefix="pitr/", server_name="loyalty", barman_bin_dir=server_engine_dir(),
                  base_backup_jobs=1, archive_wait_seconds=60, archive_timeout_seconds=ARCHIVE_TIMEOUT_S)
    return PitrResource(**{**values, **overrides})


@pytest.fixture(scope="module")
def pitr_instance() -> Iterator[dg.DagsterInstance]:
    with tempfile.TemporaryDirectory(prefix="loyalty-pitr-dagster-") as home:
        with dg.instance_for_test(temp_dir=home) as instance:
            yield instance


@pytest.fixture(scope="module")
def base_backup_run(pitr_resources, pitr_instance) -> dg.ExecuteInProcessResult:
    """weekly_base_backup_job once (base backup + retention), for the whole module."""
    from loyalty_ops.definitions import defs

    return defs.resolve_job_def("weekly_base_backup_job").execute_in_process(
        resources=pitr_resources, instance=pitr_instance, raise_on_error=False)


def scratch_dir() -> Path:
    """A new directory the ``postgres`` OS user can reach (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="loyalty-pitr-test-"))
    os.chmod(path, 0o755)
    return path

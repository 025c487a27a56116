"""Session fixtures on real parts: a throwaway PostgreSQL 15 cluster, moto's S3 server on 127.0.0.1,
and a temporary Dagster instance. Expensive things are built once per session."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Callable, Iterator

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from devstack.postgres_cluster import LocalPostgres
from devstack.s3_endpoint import LOCAL_CREDENTIALS, LocalS3
from devstack.sample_data import create_sample_schema
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops_tests.helpers import mounted_tmpfs

SAMPLE_SCALE = 0.2


# The files that take minutes (a whole stack, a container engine, an archiving cluster) start first, so the
# two workers of `scripts/test` (one file at a time each) do not end with one of them running a long file alone.
LONG_FILES_FIRST = ("e2e/", "defs/pitr/", "docker/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.replace("loyalty_ops_tests/", "", 1)
        return next((i for i, prefix in enumerate(LONG_FILES_FIRST) if path.startswith(prefix)), len(LONG_FILES_FIRST))

    items.sort(key=rank)  # stable: tests keep their order within a file


# Files that share one engine held for a worker's whole session (the container engine's lock) go to one
# worker as one unit; split across the two, the second worker would wait for the first one's session to end.
ONE_WORKER_DIRS = ("loyalty_ops_tests/docker/",)


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, except that each of ONE_WORKER_DIRS is one unit of work."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LoadFileKeepingEngineFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((d for d in ONE_WORKER_DIRS if path.startswith(d)), path)

    return LoadFileKeepingEngineFilesTogether(config, log)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalPostgres]:
    """One PostgreSQL 15 cluster for the session; TCP connections need the superuser's password."""
    cluster = LocalPostgres(
        password=f"pw-{uuid.uuid4().hex}",
        settings=("shared_preload_libraries=pg_stat_statements", "max_connections=60"),
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def loyalty_db(pg_cluster: LocalPostgres) -> str:
    """The sample loyalty database (shared, treat as read-only): returns its name."""
    pg_cluster.create_database("loyalty", drop_existing=True)
    with pg_cluster.connect("loyalty") as conn:
        create_sample_schema(conn, SAMPLE_SCALE)
    return "loyalty"


@pytest.fixture
def make_database(pg_cluster: LocalPostgres) -> Iterator[Callable[..., str]]:
    """Factory for a fresh database (optionally with sample data), dropped after the test."""
    created: list[str] = []

    def _make(prefix: str = "t", *, sample_scale: float | None = SAMPLE_SCALE) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        pg_cluster.create_database(name)
        created.append(name)
        if sample_scale:
            with pg_cluster.connect(name) as conn:
                create_sample_schema(conn, sample_scale)
        return name

    yield _make
    for name in created:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    with LocalS3() as server:
        yield server


@pytest.fixture
def s3_client(s3_server: LocalS3):
    return s3_server.client()


@pytest.fixture
def s3_bucket(s3_client) -> str:
    name = f"loyalty-test-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def dagster_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


def postgres_target(cluster: LocalPostgres, database: str, **overrides) -> PostgresTarget:
    return PostgresTarget(
        host="127.0.0.1", port=cluster.port, user=cluster.user, password=cluster.password, database=database, **overrides
    )


def s3_resource(server: LocalS3) -> S3Resource:
    return S3Resource(
        endpoint_url=server.endpoint_url,
        region_name=LOCAL_CREDENTIALS["AWS_REGION"],
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        max_attempts=2,
    )


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    path = tmp_path / "backups"
    path.mkdir()
    return path


@pytest.fixture
def ops_resources(pg_cluster, loyalty_db, s3_server, s3_bucket, backup_dir) -> dict:
    """The shared resources pointed at the test cluster's loyalty database, a temp dir and a fresh bucket."""
    return {
        "postgres": postgres_target(pg_cluster, loyalty_db),
        "backup_storage": BackupStorage(backup_dir=str(backup_dir)),
        "offsite": OffsiteStorage(s3=s3_resource(s3_server), bucket=s3_bucket, prefix="backups/"),
    }


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``small_disk(size, inodes=None, mode="0700")`` mounts a tmpfs of ``size`` bytes at a fresh directory and
    returns it: a real disk that fills. Unmounted after the test; the test is skipped when not root."""
    count = iter(range(1_000))
    with contextlib.ExitStack() as mounts:

        def _mount(size: int, inodes: int | None = None, mode: str = "0700") -> Path:
            where = tmp_path / f"disk{next(count)}"
            where.mkdir()
            return mounts.enter_context(mounted_tmpfs(where, size, inodes=inodes, mode=mode))

        yield _mount

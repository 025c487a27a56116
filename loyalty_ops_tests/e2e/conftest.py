"""The production-shaped stack for the end-to-end tests, started once per module:

- a throwaway PostgreSQL cluster holding Dagster's storage database (`dagster`) and the sample `loyalty`
  database the jobs back up;
- moto's S3 server with a bucket for the offsite copies;
- the processes a deployment runs (docs/deploy.md): a code server for the `loyalty_ops` location,
  `dagster-webserver` and `dagster-daemon run`, with DAGSTER_HOME holding a copy of the repository's
  dagster.yaml, so the instance is dagster-postgres with the real run queue, concurrency limits and
  run monitoring.

Logs of the Dagster processes go to test-artifacts/e2e-dagster.log (kept for CI artifacts).
"""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from devstack.dagster_services import REPO_ROOT, DagsterServices
from devstack.postgres_cluster import LocalPostgres, free_port
from devstack.s3_endpoint import LocalS3
from devstack.sample_data import create_sample_schema
from loyalty_ops_tests.e2e.browser import ensure_chromium

ARTIFACTS = REPO_ROOT / "test-artifacts"
SAMPLE_SCALE = 0.05
DAGSTER_DB = "dagster"
LOYALTY_DB = "loyalty"


@dataclass
class ProductionStack:
    cluster: LocalPostgres
    s3: LocalS3
    bucket: str
    backup_dir: Path
    dagster_home: Path
    services: DagsterServices
    env: dict

    @property
    def url(self) -> str:
        return self.services.url

    def dagster_db(self) -> psycopg.Connection:
        """A connection to Dagster's own storage database (runs, event_logs, job_ticks, ...)."""
        return self.cluster.connect(DAGSTER_DB)


def stack_environment(cluster: LocalPostgres, s3: LocalS3, bucket: str, backup_dir: Path) -> dict[str, str]:
    """What a deployment sets: Dagster's storage (DAGSTER_PG_*) and the code location's targets."""
    return {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(cluster.port),
        "DAGSTER_PG_USER": cluster.user,
        "DAGSTER_PG_PASSWORD": cluster.password,
        "DAGSTER_PG_DB": DAGSTER_DB,
        "PGHOST": "127.0.0.1",
        "PGPORT": str(cluster.port),
        "PGUSER": cluster.user,
        "PGPASSWORD": cluster.password,
        "PGDATABASE": LOYALTY_DB,
        "LOYALTY_BACKUP_DIR": str(backup_dir),
        "LOYALTY_S3_BUCKET": bucket,
        **s3.env(),
    }


# Whatever the calling shell points at, the stack uses the host's tools against its own cluster. (libpq
# reads PG* variables for every connection, Dagster's own storage included.)
UNSET = (
    "LOYALTY_DATABASE_URL", "LOYALTY_DB_CONTAINER", "LOYALTY_PG_RUNNER", "LOYALTY_COMPRESSION",
    "LOYALTY_COMPRESSION_LEVEL", "LOYALTY_S3_PREFIX", "LOYALTY_S3_SSE", "LOYALTY_S3_KMS_KEY_ID",
    "LOYALTY_S3_STORAGE_CLASS", "AWS_SESSION_TOKEN", "AWS_PROFILE", "PGSSLMODE", "PGSERVICE", "PGPASSFILE",
    "DOCKER_HOST",
)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get on a fresh machine."""
    return ensure_chromium()


@contextmanager
def production_stack_running(base: Path) -> Iterator[ProductionStack]:
    """Start the whole stack under ``base``; stop and remove everything on exit."""
    ARTIFACTS.mkdir(exist_ok=True)
    cluster = LocalPostgres(password=f"pw-{uuid.uuid4().hex}", settings=("max_connections=100",))
    s3 = LocalS3()
    services = None
    try:
        cluster.start()
        cluster.create_database(DAGSTER_DB)
        cluster.create_database(LOYALTY_DB)
        with cluster.connect(LOYALTY_DB) as conn:
            create_sample_schema(conn, SAMPLE_SCALE)
        s3.start()
        bucket = f"loyalty-e2e-{uuid.uuid4().hex[:8]}"
        s3.client().create_bucket(Bucket=bucket)
        backup_dir = base / "backups"
        backup_dir.mkdir()
        dagster_home = base / "dagster_home"
        dagster_home.mkdir()
        shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
        env = {**dict.fromkeys(UNSET), **stack_environment(cluster, s3, bucket, backup_dir)}
        log_path = ARTIFACTS / "e2e-dagster.log"
        log_path.unlink(missing_ok=True)
        services = DagsterServices(dagster_home, env, port=free_port(), log_path=log_path, mode="production")
        services.start(timeout_s=90)
        yield ProductionStack(cluster, s3, bucket, backup_dir, dagster_home, services, env)
    finally:
        if services is not None:
            services.stop(grace_s=3)
        s3.stop()
        cluster.destroy()


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionStack]:
    with production_stack_running(tmp_path_factory.mktemp("prod_stack")) as stack:
        yield stack

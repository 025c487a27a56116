"""A real Docker-compatible engine for the docker tests: podman's Docker API service (see
devstack/podman_engine.py), a PostgreSQL 15 image built once and cached outside the repo, and
a container named like the guide's (``loyalty-db-prod-<suffix>``) holding a small sample database.

The tests skip only when the engine itself cannot start on this machine (the reason is printed); an
image that fails to build is an error, not a skip.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from typing import Iterator

import psycopg
import pytest

from devstack.podman_engine import EngineUnavailable, PodmanEngine
from devstack.postgres_cluster import find_server_bin_dir
from devstack.sample_data import create_sample_schema
from loyalty_ops.lib.containers.health import COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.docker_runner import DockerExecToolRunner

DOCKER_SAMPLE_SCALE = 0.05


def _say(message: str) -> None:
    sys.stderr.write(f"\n[docker tests] {message}\n")


@pytest.fixture(scope="session")
def podman_engine() -> Iterator[PodmanEngine]:
    engine = PodmanEngine(log=_say)
    started = time.monotonic()
    try:
        engine.start()
    except EngineUnavailable as exc:
        _say(f"SKIPPING: the Docker-compatible engine cannot start here: {exc}")
        pytest.skip(f"Docker-compatible engine (podman) cannot start on this machine: {exc}")
    try:
        engine.ensure_image()
        _say(f"engine and image ready in {time.monotonic() - started:.1f} s ({engine.base_url})")
        yield engine
    finally:
        engine.stop()


@dataclass
class ContainerDatabase:
    """The PostgreSQL server in the test container, shaped like LocalPostgres for the shared helpers."""

    engine: PodmanEngine
    name: str
    port: int
    password: str
    compose_project: str
    user: str = "postgres"
    bin_dir: str = find_server_bin_dir()

    def spec(self, dbname: str = "postgres") -> ConnectionSpec:
        return ConnectionSpec(host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=dbname)

    def env(self, dbname: str = "loyalty") -> dict[str, str]:
        return self.spec(dbname).libpq_env()

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(**self.spec(dbname).psycopg_kwargs(), autocommit=autocommit)  # type: ignore[arg-type]

    def runner(self, dbname: str = "loyalty", **kwargs) -> DockerExecToolRunner:
        return DockerExecToolRunner(self.spec(dbname), self.name, docker_host=self.engine.base_url, **kwargs)


@pytest.fixture(scope="session")
def db_container(podman_engine: PodmanEngine) -> ContainerDatabase:
    """``loyalty-db-prod-<suffix>`` with the sample ``loyalty`` database (treat as read-only)."""
    suffix = uuid.uuid4().hex[:8]
    project = f"loyalty-test-{suffix}"
    password = f"pw-{uuid.uuid4().hex}"
    container, port = podman_engine.run_postgres(
        f"loyalty-db-prod-{suffix}",
        password=password,
        labels={COMPOSE_PROJECT_LABEL: project, COMPOSE_SERVICE_LABEL: "db"},
    )
    db = ContainerDatabase(podman_engine, container.name, port, password, project)
    with db.connect() as conn:
        conn.execute("CREATE DATABASE loyalty")
    with db.connect("loyalty") as conn:
        create_sample_schema(conn, DOCKER_SAMPLE_SCALE)
    return db


@pytest.fixture(scope="session")
def stopped_container(podman_engine: PodmanEngine) -> Iterator[str]:
    """A container of the same image that ran and exited (like a crashed database container)."""
    name = f"loyalty-db-stopped-{uuid.uuid4().hex[:8]}"
    client = podman_engine.client()
    container = client.containers.run(
        podman_engine.ensure_image(), ["/bin/sh", "-c", "exit 3"], name=name, detach=True, network_mode="none",
        ulimits=[{"Name": "nofile", "Soft": 1024, "Hard": 1024}, {"Name": "nproc", "Soft": 1024, "Hard": 1024}],
        labels={"loyalty_ops.devstack": "1"},
    )
    container.wait(timeout=30)
    yield name
    container.remove(force=True)
    client.close()

"""Configuration of the docker runner and the container checks from the environment (no engine needed)."""

from __future__ import annotations

import pytest

from loyalty_ops.defs.containers import definitions as container_definitions
from loyalty_ops.defs.settings import SettingsError, load_settings
from loyalty_ops.defs.shared_resources import postgres_target
from loyalty_ops.lib.containers.engine import parse_names
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.docker_runner import DockerExecToolRunner


def test_setting_the_container_selects_the_docker_runner(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    target = postgres_target(load_settings({"LOYALTY_DB_CONTAINER": "loyalty-db-prod", "PGHOST": "127.0.0.1",
                                            "PGPASSWORD": "s3cret", "DOCKER_HOST": "unix:///run/docker.sock"}))
    runner = target.tools()
    assert isinstance(runner, DockerExecToolRunner)
    assert runner.container == "loyalty-db-prod" and runner.docker_host == "unix:///run/docker.sock"
    assert runner.description == "docker exec in container loyalty-db-prod via unix:///run/docker.sock"


def test_exec_connection_settings():
    spec = ConnectionSpec(host="db.example", port=15432, user="postgres", password="pw", dbname="loyalty",
                          extra_env={"PGPASSFILE": "/home/ops/.pgpass", "PGAPPNAME": "x"})
    as_given = DockerExecToolRunner(spec, "c").exec_environment("loyalty")
    assert as_given["PGHOST"] == "db.example" and as_given["PGPORT"] == "15432"
    assert "PGPASSWORD" not in as_given and "PGPASSFILE" not in as_given and as_given["PGAPPNAME"] == "x"
    settings = load_settings({"LOYALTY_DB_CONTAINER": "c", "LOYALTY_DB_CONTAINER_PGHOST": "localhost",
                              "LOYALTY_DB_CONTAINER_PGPORT": "5432", "LOYALTY_DB_CONTAINER_USER": "postgres"})
    from_settings = postgres_target(settings).model_copy(update={"host": "db.example", "port": 15432}).tools()
    compose = from_settings.exec_environment("other")
    assert (compose["PGHOST"], compose["PGPORT"], compose["PGDATABASE"]) == ("localhost", "5432", "other")
    assert from_settings.exec_user == "postgres"
    socket_env = DockerExecToolRunner(spec, "c", exec_host="local").exec_environment(None)
    assert "PGHOST" not in socket_env
    with pytest.raises(SettingsError, match="LOYALTY_DB_CONTAINER_PGPORT must be a whole number, got 'five'"):
        load_settings({"LOYALTY_DB_CONTAINER_PGPORT": "five"})


def test_container_health_is_defined_only_when_configured():
    assert not list(container_definitions.build_defs(load_settings({})).assets or [])
    defs = container_definitions.build_defs(load_settings({"LOYALTY_COMPOSE_PROJECT": "loyalty"}))
    assert defs.resolve_assets_def("container_health").group_names_by_key
    assert defs.resolve_job_def("container_health_job").tags["loyalty_ops/severity"] == "warning"
    assert parse_names("loyalty-db-prod, loyalty-api-prod  loyalty-redis-prod") == (
        "loyalty-db-prod", "loyalty-api-prod", "loyalty-redis-prod")

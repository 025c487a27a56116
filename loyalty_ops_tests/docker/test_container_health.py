"""container_health against the real test container, plus the pure evaluation at the guide's thresholds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from loyalty_ops.defs.containers.assets import HEALTHY_CHECK, MEMORY_CHECK, RESTARTING_CHECK, container_health
from loyalty_ops.defs.containers.resources import ContainerEngine
from loyalty_ops.lib.containers.health import (
    ContainerSnapshot,
    cpu_percent,
    evaluate,
    memory_usage,
    needs_second_sample,
    parse_engine_time,
    snapshot_from,
)

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=timezone.utc)


def _materialize(engine: ContainerEngine, instance) -> tuple[dict, dict]:
    result = dg.materialize([container_health], resources={"container_engine": engine}, instance=instance,
                            raise_on_error=True)
    mat = result.get_asset_materialization_events()[0].materialization
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    return meta, checks


@pytest.mark.docker
def test_container_health_reports_the_real_container(db_container, stopped_container, dagster_instance):
    engine = ContainerEngine(compose_project=db_container.compose_project, docker_host=db_container.engine.base_url)
    meta, checks = _materialize(engine, dagster_instance)
    assert meta["container_count"] == 1 and meta["running_count"] == 1
    state = meta["containers"][db_container.name]
    assert state["status"] == "running" and state["service"] == "db"
    assert state["restart_count"] == 0
    assert state["health"] is None  # the image has no healthcheck
    assert 0 < state["uptime_s"] < 3600
    assert state["memory_bytes"] > 1_000_000 and state["memory_limit_bytes"] > state["memory_bytes"]
    assert state["cpu_percent"] is not None and state["cpu_percent"] >= 0
    assert all(c.passed for c in checks.values()) and set(checks) == {MEMORY_CHECK, RESTARTING_CHECK, HEALTHY_CHECK}
    assert db_container.name in meta["report"]

    # The guide's list of names instead of a project; a stopped container and a tight memory limit fail.
    engine = ContainerEngine(containers=f"{db_container.name},{stopped_container}",
                             docker_host=db_container.engine.base_url, memory_limit_percent=0.001)
    meta, checks = _materialize(engine, dagster_instance)
    assert meta["containers"][stopped_container]["status"] == "exited"
    assert not checks[HEALTHY_CHECK].passed and stopped_container in checks[HEALTHY_CHECK].description
    assert not checks[MEMORY_CHECK].passed and db_container.name in checks[MEMORY_CHECK].description
    assert checks[RESTARTING_CHECK].passed


def test_container_health_without_configuration_fails_with_the_variables_to_set(dagster_instance):
    result = dg.materialize([container_health], resources={"container_engine": ContainerEngine()},
                            instance=dagster_instance, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "LOYALTY_COMPOSE_PROJECT" in failure and "LOYALTY_CONTAINERS" in failure


def _attrs(status="running", health="", restarts=0, started="2026-11-27T05:00:00.123456789Z", labels=None, exit_code=0):
    return {
        "Id": "abc123", "Name": "/loyalty-api-prod", "RestartCount": restarts,
        "State": {"Status": status, "Running": status == "running", "Restarting": status == "restarting",
                  "StartedAt": started, "ExitCode": exit_code, "Health": {"Status": health}},
        "Config": {"Image": "loyalty/api:1", "Labels": labels or {"com.docker.compose.service": "api"}},
    }


def _stats(usage, limit, inactive=0, cpu=(0, 0), pre=(0, 0)):
    return {
        "memory_stats": {"usage": usage, "limit": limit, "stats": {"total_inactive_file": inactive}},
        "cpu_stats": {"cpu_usage": {"total_usage": cpu[0]}, "system_cpu_usage": cpu[1], "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": pre[0]}, "system_cpu_usage": pre[1]},
    }


def test_memory_and_cpu_are_computed_like_docker_stats():
    assert memory_usage(_stats(900, 1000, inactive=100)) == (800, 1000)
    assert cpu_percent(_stats(1, 1, cpu=(3_000, 20_000), pre=(1_000, 10_000))) == 40.0  # 2000/10000 * 2 cpus
    podman_like = _stats(1, 1, cpu=(3_000, 20_000))
    assert needs_second_sample(podman_like) and cpu_percent(podman_like) is None
    assert cpu_percent(podman_like, previous={"cpu_stats": {"cpu_usage": {"total_usage": 2_000}, "system_cpu_usage": 15_000}}) == 40.0
    assert parse_engine_time("2026-11-27T05:00:00.123456789Z") == datetime(2026, 11, 27, 5, 0, 0, 123456, tzinfo=timezone.utc)
    assert parse_engine_time("0001-01-01T00:00:00Z") is None


def test_evaluation_at_the_guides_thresholds():
    healthy = snapshot_from(_attrs(health="healthy"), _stats(850, 1000), now=NOW)
    assert healthy.uptime_s == pytest.approx(3600 - 0.123456, abs=1e-3) and healthy.memory_percent == 85.0
    assert evaluate([healthy]).passed  # exactly 85% is not above 85%

    hungry = snapshot_from(_attrs(), _stats(851, 1000), now=NOW)
    restarting = snapshot_from(_attrs(status="restarting", restarts=7), None, now=NOW)
    sick = snapshot_from(_attrs(health="unhealthy"), _stats(10, 1000), now=NOW)
    stopped = snapshot_from(_attrs(status="exited", exit_code=137), None, now=NOW)
    oneoff = snapshot_from(_attrs(status="exited", labels={"com.docker.compose.oneoff": "True"}), None, now=NOW)
    report = evaluate([hungry, restarting, sick, stopped, oneoff])
    assert [f.check for f in report.findings] == ["memory", "restarting", "unhealthy", "stopped"]
    assert "85.1%" in report.findings[0].message
    assert "restart count 7" in report.findings[1].message
    assert "exit code 137" in report.findings[3].message
    assert restarting.uptime_s is None and stopped.memory_bytes is None
    assert "| `loyalty-api-prod` | api | restarting |" in report.markdown()


def test_snapshot_without_limit_or_stats_has_no_memory_percent():
    snap = ContainerSnapshot("x", "id", "running", None, 0, 10.0, 100, None, None)
    assert snap.memory_percent is None and evaluate([snap]).passed
    assert snapshot_from(_attrs(started=(NOW - timedelta(days=2)).isoformat()), None, now=NOW).uptime_s == 2 * 86400

"""application_health against an HTTP server on 127.0.0.1 playing the API, and a real redis-server."""

from __future__ import annotations

import redis

from loyalty_ops.defs.reports.assets import application_health
from loyalty_ops.defs.reports.resources import ApplicationEndpoints
from loyalty_ops_tests.defs.reports.conftest import invoke, unreachable_url


def check_app(**endpoints):
    return invoke(application_health, {"application_endpoints": ApplicationEndpoints(**{"timeout_s": 2.0, **endpoints})})


def test_healthy_api_passes_and_records_latency(fake_api):
    meta, checks = check_app(api_url=fake_api.url)
    assert checks["api_healthy"].passed, checks["api_healthy"].description
    assert checks["api_latency"].passed
    assert meta["health_status"] == "healthy" and meta["ready_status"] == "healthy"
    assert isinstance(meta["health_latency_ms"], float)
    assert meta["api"]["/health"]["checks"]["database"]["latency_ms"] == 2.0
    assert set(meta["api"]["/ready"]["checks"]) == {"database", "database_pool", "database_migration"}
    # Redis not configured: its checks pass and say nothing was checked.
    assert checks["redis_reachable"].passed and "not configured" in checks["redis_reachable"].description


def test_unhealthy_json_fails_the_check(fake_api):
    fake_api.responses["/ready"] = (
        503,
        {"status": "unhealthy", "checks": {"database": {"status": "healthy"},
                                           "database_migration": {"status": "unhealthy", "message": "pending migration 42"}}},
        0.0,
    )
    meta, checks = check_app(api_url=fake_api.url)
    check = checks["api_healthy"]
    assert not check.passed and check.severity.value == "ERROR"
    assert "/ready answered HTTP 503" in check.description
    assert "database_migration is 'unhealthy': pending migration 42" in check.description
    assert meta["ready_status"] == "unhealthy" and meta["status"] == "error"


def test_degraded_sub_check_is_a_warning_and_slow_api_an_error(fake_api):
    fake_api.responses["/health"] = (200, {"status": "healthy", "checks": {"database": {"status": "degraded"}}}, 0.0)
    fake_api.responses["/ready"] = (200, {"status": "healthy", "checks": {}}, 0.6)
    _, checks = check_app(api_url=fake_api.url)
    assert not checks["api_healthy"].passed and checks["api_healthy"].severity.value == "WARN"
    latency = checks["api_latency"]
    assert not latency.passed and latency.severity.value == "ERROR" and "/ready" in latency.description


def test_unreachable_api_and_redis_fail_checks_without_raising():
    meta, checks = check_app(api_url=unreachable_url(), redis_url=unreachable_url("redis") + "/0")
    assert not checks["api_healthy"].passed and checks["api_healthy"].severity.value == "ERROR"
    assert "Connection refused" in checks["api_healthy"].description
    assert not checks["api_latency"].passed
    assert not checks["redis_reachable"].passed and checks["redis_reachable"].severity.value == "ERROR"
    assert not checks["redis_memory"].passed and checks["redis_memory"].metadata["loyalty_ops/severity"].value == "info"
    assert meta["health_status"] == "unreachable" and meta["redis_reachable"] is False
    # The run-level version (a real run that succeeds with failed checks) is in test_morning_report.py.


def test_redis_hit_rate_and_memory_from_a_real_server(redis_server):
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.config_resetstat()
    client.set("member:1:points", 120)
    for _ in range(3):
        client.get("member:1:points")  # hits
    client.get("member:2:points")  # a miss
    meta, checks = check_app(redis_url=redis_server)
    assert checks["redis_reachable"].passed, checks["redis_reachable"].description
    assert meta["redis_hit_rate_pct"] == 75.0
    assert "hit rate 75.0%" in checks["redis_reachable"].description
    assert checks["redis_memory"].passed and meta["redis_memory_percent"] < 85
    assert meta["redis"]["maxmemory"] == 8 * 1024 * 1024
    # Fill it past 85% of maxmemory (8 MB, noeviction): the memory check fails at ERROR.
    try:
        for i in range(200):
            client.set(f"cache:{i}", b"x" * 64 * 1024)
            if client.info("memory")["used_memory"] > 0.9 * 8 * 1024 * 1024:
                break
    except redis.exceptions.OutOfMemoryError:
        pass
    meta, checks = check_app(redis_url=redis_server)
    memory = checks["redis_memory"]
    assert not memory.passed and memory.severity.value == "ERROR", memory.description
    assert "of maxmemory" in memory.description
    client.flushall()
    client.close()

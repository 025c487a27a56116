"""Threshold evaluation, health verdicts and the API/Redis parsing, without a database or Dagster."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from loyalty_ops.lib.reports import application as app
from loyalty_ops.lib.reports import thresholds as th
from loyalty_ops.lib.reports.health import DatabaseHealth, DiskUsage, MemoryUsage, evaluate_database_health
from loyalty_ops.lib.reports.render import CheckOutcome, MorningInputs, morning_markdown
from loyalty_ops.lib.reports.sizes import dropped_tables, table_growth


@pytest.mark.parametrize(
    "threshold, value, level",
    [
        (th.CONNECTIONS_PERCENT, 80.0, th.WARN),  # the guide alerts *above* 80%
        (th.CONNECTIONS_PERCENT, 80.1, th.ERROR),
        (th.CONNECTIONS_PERCENT, 70.0, th.OK),
        (th.DISK_PERCENT, 81, th.ERROR),
        (th.MEMORY_PERCENT, 85.5, th.ERROR),
        (th.MEMORY_PERCENT, 80, th.WARN),
        (th.API_LATENCY_MS, 501, th.ERROR),
        (th.API_LATENCY_MS, 151, th.WARN),
        (th.API_LATENCY_MS, None, th.OK),
    ],
)
def test_threshold_levels(threshold, value, level):
    assert threshold.level(value) == level


def test_guide_numbers_are_the_error_levels():
    assert (th.CONNECTIONS_PERCENT.error, th.DISK_PERCENT.error, th.MEMORY_PERCENT.error, th.API_LATENCY_MS.error) == (80, 80, 85, 500)
    assert all(t.warn < t.error for t in th.ALL_THRESHOLDS)
    assert (th.CONNECTIONS_PERCENT.name, th.CONNECTIONS_PERCENT.warn, th.CONNECTIONS_PERCENT.error) == ("connections_percent", 70, 80)
    assert th.worst([th.OK, th.WARN, th.OK]) == th.WARN and th.worst([]) == th.OK


def _health(**overrides) -> DatabaseHealth:
    base = dict(
        target="postgresql://u@db:5432/loyalty", reachable=True, connect_ms=3.0, query_ms=0.4, server_version="15.8",
        in_recovery=False,
        connections={"total": 10, "active": 2, "idle": 8, "idle_in_transaction": 0, "database_total": 9,
                     "database_active": 2, "database_idle": 7, "max_connections": 100, "reserved": 3},
        xid_ages={"loyalty": 1000, "postgres": 900},
        disk=DiskUsage("/backups", 100, 50, 50), memory=MemoryUsage("host x", 100, 40),
    )
    base.update(overrides)
    return DatabaseHealth(**base)


def test_healthy_snapshot_passes_every_check():
    verdicts = evaluate_database_health(_health())
    assert set(verdicts) == {"database_reachable", "database_connections", "long_running_queries", "transaction_id_age",
                             "replication_lag", "backup_volume_disk", "host_memory"}
    assert all(v.passed for v in verdicts.values()), verdicts


def test_disk_memory_xid_replication_and_long_queries_levels():
    verdicts = evaluate_database_health(_health(
        disk=DiskUsage("/backups", 100, 85, 15), memory=MemoryUsage("host x", 100, 80),
        xid_ages={"loyalty": 1_200_000_000},
        replicas=[{"application_name": "replica1", "client": "10.0.0.2", "state": "streaming", "sync_state": "async",
                   "replay_lag_s": 400.0, "replay_lag_bytes": 1}],
        long_queries=[{"pid": 1, "usename": "app", "application_name": "api", "state": "active", "seconds": 12.0, "query": "x"},
                      {"pid": 2, "usename": "postgres", "application_name": "pg_dump", "state": "active", "seconds": 900.0, "query": "COPY"}],
    ))
    assert verdicts["backup_volume_disk"].level == th.ERROR and "85% used" in verdicts["backup_volume_disk"].message
    assert verdicts["host_memory"].level == th.WARN
    assert verdicts["transaction_id_age"].level == th.ERROR
    assert verdicts["replication_lag"].level == th.ERROR
    longq = verdicts["long_running_queries"]
    assert longq.level == th.WARN and "longest 12 s" in longq.message and "1 from backup/restore" in longq.message


def test_disk_percent_is_dfs_use_percent():
    # df: used / (used + available); root-reserved blocks are neither.
    assert DiskUsage("/x", total_bytes=100, used_bytes=72, free_bytes=18).percent == 80.0


def test_unreachable_database_is_one_error_and_unmeasured_warnings():
    verdicts = evaluate_database_health(_health(reachable=False, error="cannot connect to postgresql://u@db:5432/loyalty: refused",
                                                connections={}, xid_ages={}))
    assert verdicts["database_reachable"].level == th.ERROR
    for name in ("database_connections", "long_running_queries", "transaction_id_age", "replication_lag"):
        assert verdicts[name].level == th.WARN and not verdicts[name].measured
    assert verdicts["backup_volume_disk"].measured and verdicts["backup_volume_disk"].passed


def _endpoint(path, **kw):
    base = dict(url=f"http://api{path}", reachable=True, http_status=200, latency_ms=20.0, status="healthy",
                checks={"database": {"status": "healthy", "message": ""}})
    base.update(kw)
    return app.EndpointResult(**base)


def test_api_status_evaluation():
    ok = {"/health": _endpoint("/health"), "/ready": _endpoint("/ready")}
    assert app.evaluate_api_status(ok).passed and app.evaluate_api_latency(ok).passed
    bad = {**ok, "/ready": _endpoint("/ready", checks={"database_pool": {"status": "unhealthy", "message": "exhausted"}})}
    verdict = app.evaluate_api_status(bad)
    assert verdict.level == th.ERROR and "database_pool is 'unhealthy': exhausted" in verdict.message
    not_json = {**ok, "/health": _endpoint("/health", error="HTTP 200, body is not JSON: b'<html>'")}
    assert app.evaluate_api_status(not_json).level == th.ERROR
    slow = {**ok, "/health": _endpoint("/health", latency_ms=200.0)}
    assert app.evaluate_api_latency(slow).level == th.WARN
    down = {**ok, "/health": app.EndpointResult(url="http://api/health", reachable=False, error="refused")}
    assert app.evaluate_api_latency(down).level == th.ERROR


def test_latency_strings_and_url_redaction():
    assert app._parse_latency_ms("2ms") == 2.0 and app._parse_latency_ms("1.5s") == 1500.0
    assert app._parse_latency_ms("300us") == pytest.approx(0.3) and app._parse_latency_ms("soon") is None
    assert app.redact_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert app.redact_url("redis://user:s3cret@cache/0") == "redis://user:***@cache/0"
    assert app.redact_url("http://api:8080") == "http://api:8080"


def test_redis_hit_rate_and_memory_basis():
    health = app.redis_health_from_info(
        "redis://:pw@cache:6379/0",
        {"used_memory": 900, "maxmemory": 1000, "keyspace_hits": 90, "keyspace_misses": 10, "redis_version": "7.0.15",
         "evicted_keys": 0, "total_system_memory": 10_000},
    )
    assert health.hit_rate == 90.0 and health.memory_percent == 90.0 and "pw" not in health.url
    verdicts = app.evaluate_redis(health)
    assert verdicts["redis_reachable"].passed and verdicts["redis_memory"].level == th.ERROR
    no_limit = app.redis_health_from_info("redis://cache", {"used_memory": 100, "maxmemory": 0, "total_system_memory": 1000})
    assert no_limit.memory_percent == 10.0 and "no maxmemory" in no_limit.memory_limit[1]
    assert app.evaluate_redis(app.RedisHealth(url="redis://cache", reachable=False, error="refused"))["redis_reachable"].level == th.ERROR


def test_growth_between_snapshots():
    growth = table_growth({"public.events": 100, "public.gone": 5}, {"public.events": 150, "public.new": 10})
    assert [(g.name, g.delta_bytes) for g in growth] == [("public.events", 50), ("public.new", None)]
    assert growth[0].delta_pct == 50.0
    assert dropped_tables({"public.events": 1, "public.gone": 5}, {"public.events": 1}) == ["public.gone"]


def test_morning_markdown_flags_stale_unverified_backup():
    now = datetime(2026, 1, 5, 5, 0, tzinfo=timezone.utc)
    inputs = MorningInputs(
        now=now, database="loyalty",
        backup={"filename": "loyalty_20260103_000000.dump.gz", "at": now - timedelta(hours=30), "bytes": 2048,
                "verified": False, "failed_checks": ["backup_checksum_matches"], "offsite": None},
        health_at=now - timedelta(minutes=5),
        checks=[CheckOutcome("database_health", "backup_volume_disk", False, "ERROR", "85% used")],
        disk={"path": "/backups", "percent": 85.0, "used": 85, "free": 15, "total": 100},
    )
    text = morning_markdown(inputs)
    assert inputs.status == th.ERROR and text.startswith("# Morning report: ERROR")
    assert "**NOT verified**: backup_checksum_matches" in text and "(older than 26 h)" in text
    assert "**no offsite copy**" in text and "never ran" in text
    assert "**85% used** (ERROR)" in text


def test_standby_reports_its_own_replay_lag():
    verdict = evaluate_database_health(_health(in_recovery=True, standby_lag_s=90.0))["replication_lag"]
    assert verdict.level == th.WARN and "replay lag 90.0 s" in verdict.message

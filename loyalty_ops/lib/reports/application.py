"""Application health: the API's /health and /ready endpoints and Redis's INFO, as the guide reads them.

Probes never raise for an unreachable or misbehaving endpoint: they return a result carrying the error,
so a dead API is a failed check with a clear message, not a crashed run.

The guide's JSON::

    {"status": "healthy", "timestamp": "...",
     "checks": {"database": {"status": "healthy", "message": "Database connection OK", "latency": "2ms"}}}
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from loyalty_ops.lib.reports import thresholds as th
from loyalty_ops.lib.reports.thresholds import Verdict

HEALTHY_WORDS = {"healthy", "ok", "up", "pass", "passing"}
DEGRADED_WORDS = {"degraded", "warn", "warning"}
API_ENDPOINTS = ("/health", "/ready")


def redact_url(url: str) -> str:
    """The URL without any password, for logs and metadata."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    else:
        netloc = f":***@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def status_level(status: Any) -> str:
    word = str(status or "").strip().lower()
    if word in HEALTHY_WORDS:
        return th.OK
    if word in DEGRADED_WORDS:
        return th.WARN
    return th.ERROR


@dataclass
class EndpointResult:
    url: str
    reachable: bool
    http_status: Optional[int] = None
    latency_ms: Optional[float] = None
    status: Optional[str] = None
    checks: dict[str, dict] = field(default_factory=dict)
    error: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


def _parse_latency_ms(value: Any) -> Optional[float]:
    """The guide's sub-check latency strings ("2ms", "1.5s", "300µs") in milliseconds."""
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ns|us|µs|ms|s)?\s*", str(value or ""))
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2) or "ms"
    return number * {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}[unit]


def probe_endpoint(url: str, timeout_s: float = 5.0) -> EndpointResult:
    """GET ``url`` and read the guide's health JSON. HTTP 503 with a JSON body is read too (APIs report
    "unhealthy" that way)."""
    started = time.perf_counter()
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "loyalty_ops"})
    try:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                code, body = response.status, response.read(1_000_000)
        except urllib.error.HTTPError as exc:
            code, body = exc.code, exc.read(1_000_000)
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return EndpointResult(
            url=redact_url(url), reachable=False, latency_ms=round(1000 * (time.perf_counter() - started), 1),
            error=f"GET {redact_url(url)} failed: {reason}",
        )
    latency = round(1000 * (time.perf_counter() - started), 1)
    result = EndpointResult(url=redact_url(url), reachable=True, http_status=code, latency_ms=latency)
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        result.error = f"HTTP {code}, body is not JSON: {body[:200]!r}"
        return result
    if not isinstance(payload, dict):
        result.error = f"HTTP {code}, JSON is not an object"
        return result
    result.status = None if payload.get("status") is None else str(payload.get("status"))
    checks = payload.get("checks") or {}
    if isinstance(checks, dict):
        for name, check in checks.items():
            if isinstance(check, dict):
                entry = {"status": str(check.get("status")), "message": str(check.get("message") or "")}
                latency_ms = _parse_latency_ms(check.get("latency")) if "latency" in check else None
                if latency_ms is not None:
                    entry["latency_ms"] = round(latency_ms, 3)
            else:
                entry = {"status": str(check), "message": ""}
            result.checks[str(name)] = entry
    return result


def probe_api(base_url: str, timeout_s: float = 5.0) -> dict[str, EndpointResult]:
    base = base_url.rstrip("/")
    return {path: probe_endpoint(base + path, timeout_s) for path in API_ENDPOINTS}


def evaluate_api_status(results: dict[str, EndpointResult]) -> Verdict:
    """ERROR when an endpoint is unreachable, answers non-2xx or not-JSON, or reports any status other
    than healthy (top level or a sub-check); WARN for "degraded"."""
    problems: list[tuple[str, str]] = []
    summary = []
    for path, r in results.items():
        if not r.reachable:
            problems.append((th.ERROR, r.error or f"{path} unreachable"))
            continue
        if r.error:
            problems.append((th.ERROR, f"{path}: {r.error}"))
            continue
        if not 200 <= (r.http_status or 0) < 300:
            problems.append((th.ERROR, f"{path} answered HTTP {r.http_status}"))
        level = status_level(r.status)
        if level != th.OK:
            problems.append((level, f"{path} status is {r.status!r}"))
        for name, check in r.checks.items():
            sub = status_level(check.get("status"))
            if sub != th.OK:
                detail = f": {check['message']}" if check.get("message") else ""
                problems.append((sub, f"{path} check {name} is {check.get('status')!r}{detail}"))
        summary.append(f"{path} {r.status} ({len(r.checks)} checks, {r.latency_ms:.0f} ms)")
    if problems:
        return Verdict(th.worst(level for level, _ in problems), "; ".join(message for _, message in problems))
    return Verdict(th.OK, "; ".join(summary))


def evaluate_api_latency(results: dict[str, EndpointResult]) -> Verdict:
    answered = {path: r for path, r in results.items() if r.reachable}
    if len(answered) < len(results):
        missing = ", ".join(path for path in results if path not in answered)
        return Verdict(th.ERROR, f"no response from {missing}: latency unknown, counted as over the limit")
    slowest_path = max(answered, key=lambda p: answered[p].latency_ms or 0.0)
    slowest = answered[slowest_path].latency_ms or 0.0
    return Verdict(
        th.API_LATENCY_MS.level(slowest),
        f"slowest endpoint {slowest_path} took {slowest:.0f} ms [{th.API_LATENCY_MS.describe()}]",
    )


@dataclass
class RedisHealth:
    url: str
    reachable: bool
    error: Optional[str] = None
    latency_ms: Optional[float] = None
    version: Optional[str] = None
    used_memory: Optional[int] = None
    used_memory_rss: Optional[int] = None
    used_memory_peak: Optional[int] = None
    maxmemory: Optional[int] = None
    maxmemory_policy: Optional[str] = None
    total_system_memory: Optional[int] = None
    keyspace_hits: Optional[int] = None
    keyspace_misses: Optional[int] = None
    evicted_keys: Optional[int] = None
    expired_keys: Optional[int] = None
    rejected_connections: Optional[int] = None
    connected_clients: Optional[int] = None

    @property
    def hit_rate(self) -> Optional[float]:
        if self.keyspace_hits is None or self.keyspace_misses is None:
            return None
        lookups = self.keyspace_hits + self.keyspace_misses
        return round(100.0 * self.keyspace_hits / lookups, 2) if lookups else None

    @property
    def memory_limit(self) -> tuple[Optional[int], str]:
        """The limit memory use is measured against: maxmemory when set, else the machine's memory."""
        if self.maxmemory:
            return self.maxmemory, "maxmemory"
        if self.total_system_memory:
            return self.total_system_memory, "total system memory (no maxmemory set)"
        return None, "no limit known"

    @property
    def memory_percent(self) -> Optional[float]:
        limit, _ = self.memory_limit
        if not limit or self.used_memory is None:
            return None
        return round(100.0 * self.used_memory / limit, 2)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["hit_rate"] = self.hit_rate
        out["memory_percent"] = self.memory_percent
        return out


_INT_FIELDS = (
    "used_memory", "used_memory_rss", "used_memory_peak", "maxmemory", "total_system_memory", "keyspace_hits",
    "keyspace_misses", "evicted_keys", "expired_keys", "rejected_connections", "connected_clients",
)


def redis_health_from_info(url: str, info: dict[str, Any], latency_ms: Optional[float] = None) -> RedisHealth:
    """A :class:`RedisHealth` from the merged ``INFO memory``/``INFO stats``/``INFO server`` fields."""
    health = RedisHealth(url=redact_url(url), reachable=True, latency_ms=latency_ms)
    for name in _INT_FIELDS:
        if name in info:
            try:
                setattr(health, name, int(info[name]))
            except (TypeError, ValueError):
                pass
    health.maxmemory_policy = str(info["maxmemory_policy"]) if "maxmemory_policy" in info else None
    health.version = str(info["redis_version"]) if "redis_version" in info else None
    return health


def probe_redis(url: str, timeout_s: float = 5.0) -> RedisHealth:
    """``INFO memory``, ``INFO stats`` (the guide's two commands) and ``INFO server`` for the version."""
    import redis

    started = time.perf_counter()
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            client.ping()
            latency = round(1000 * (time.perf_counter() - started), 1)
            info: dict[str, Any] = {}
            for section in ("memory", "stats", "server", "clients"):
                info.update(client.info(section))
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return RedisHealth(url=redact_url(url), reachable=False, error=f"Redis at {redact_url(url)}: {exc}")
    return redis_health_from_info(url, info, latency)


def evaluate_redis(health: RedisHealth) -> dict[str, Verdict]:
    if not health.reachable:
        message = health.error or "Redis unreachable"
        return {
            "redis_reachable": Verdict(th.ERROR, message),
            "redis_memory": Verdict(th.WARN, f"not measured: {message}", measured=False),
        }
    rate = health.hit_rate
    rate_text = f"hit rate {rate:.1f}%" if rate is not None else "no lookups yet"
    verdicts = {
        "redis_reachable": Verdict(
            th.OK, f"PING in {health.latency_ms or 0:.0f} ms, Redis {health.version}, {rate_text} "
            f"({health.keyspace_hits} hits, {health.keyspace_misses} misses), {health.evicted_keys} evicted"
        )
    }
    percent = health.memory_percent
    limit, basis = health.memory_limit
    if percent is None:
        verdicts["redis_memory"] = Verdict(th.OK, f"used_memory {health.used_memory} bytes; {basis}", measured=False)
    else:
        verdicts["redis_memory"] = Verdict(
            th.MEMORY_PERCENT.level(percent),
            f"used_memory {percent:.1f}% of {basis} ({health.used_memory:,} of {limit:,} bytes) "
            f"[{th.MEMORY_PERCENT.describe()}]",
        )
    return verdicts


APPLICATION_CHECK_DESCRIPTIONS = {
    "api_healthy": "GET /health and /ready answer 2xx JSON whose status and every sub-check are healthy "
    "(ERROR when unreachable or unhealthy, WARN when degraded). Passes when LOYALTY_API_URL is unset.",
    "api_latency": f"Slowest of /health and /ready ({th.API_LATENCY_MS.describe()}). Passes when LOYALTY_API_URL is unset.",
    "redis_reachable": "Redis answers PING and INFO (ERROR when it does not). Passes when LOYALTY_REDIS_URL is unset.",
    "redis_memory": f"Redis used_memory against maxmemory, or the machine's memory when no maxmemory is set "
    f"({th.MEMORY_PERCENT.describe()}). Passes when LOYALTY_REDIS_URL is unset.",
}


def not_configured(variable: str) -> Verdict:
    return Verdict(th.OK, f"not configured ({variable} is unset): nothing was checked", measured=False)

"""Every alerting threshold of the reports domain, in one place.

The operations guide's "When to Alert" list sets the ERROR level of each check: crossing it makes the
asset check fail with severity ERROR (the alerting sensors page on that). The WARN level is an early
warning below it (from the guide's "Expected Metrics" where it has one) so someone can act before the
page. Change a number here and every check, the docs table and the morning report follow.

A value *above* ``error`` is ERROR, above ``warn`` is WARN (``higher_is_worse``); for the few metrics where
lower is worse the comparison is reversed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

OK = "ok"
WARN = "warn"
ERROR = "error"
_RANK = {OK: 0, WARN: 1, ERROR: 2}


@dataclass(frozen=True)
class Threshold:
    """Levels for one metric. ``source`` says where each number comes from."""

    name: str
    warn: float
    error: float
    unit: str
    source: str
    higher_is_worse: bool = True

    def level(self, value: Optional[float]) -> str:
        if value is None:
            return OK
        if self.higher_is_worse:
            return ERROR if value > self.error else WARN if value > self.warn else OK
        return ERROR if value < self.error else WARN if value < self.warn else OK

    def describe(self) -> str:
        op = ">" if self.higher_is_worse else "<"
        return f"WARN {op} {_number(self.warn)} {self.unit}, ERROR {op} {_number(self.error)} {self.unit}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10_000 else f"{value:g}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of evaluating one check: level ok/warn/error and a sentence for the on-call engineer."""

    level: str
    message: str
    measured: bool = True

    @property
    def passed(self) -> bool:
        return self.level == OK


def worst(levels) -> str:
    out = OK
    for level in levels:
        if _RANK[level] > _RANK[out]:
            out = level
    return out


CONNECTIONS_PERCENT = Threshold(
    "connections_percent", warn=70, error=80, unit="% of max_connections",
    source="guide: 'Database connections > 80% of max' (ERROR); WARN is our early warning",
)
DISK_PERCENT = Threshold(
    "disk_percent", warn=70, error=80, unit="% used",
    source="guide: 'Disk usage > 80%' (ERROR); WARN is our early warning",
)
MEMORY_PERCENT = Threshold(
    "memory_percent", warn=75, error=85, unit="% used",
    source="guide: 'Memory usage > 85%' (ERROR); WARN is our early warning",
)
API_LATENCY_MS = Threshold(
    "api_latency_ms", warn=150, error=500, unit="ms",
    source="guide: 'API response time > 500ms' (ERROR); WARN at the guide's p95 baseline of 150 ms",
)
LONG_QUERY_SECONDS = Threshold(
    "long_query_seconds", warn=10, error=300, unit="s",
    source="guide's slow-query listing uses 10 s (WARN); ERROR at 5 minutes is ours",
)
XID_AGE = Threshold(
    "xid_age", warn=500_000_000, error=1_000_000_000, unit="transactions",
    source="ours: PostgreSQL stops accepting writes near 2.1 billion; autovacuum should keep age near "
    "autovacuum_freeze_max_age (200 million by default)",
)
REPLICATION_LAG_SECONDS = Threshold(
    "replication_lag_seconds", warn=60, error=300, unit="s", source="ours: the guide sets no number",
)

# Client applications whose long statements are expected (our own backup, restore and report jobs):
# they are listed in the report but do not fail the long-running-query check.
LONG_QUERY_IGNORED_APPLICATIONS = ("pg_dump", "pg_restore", "pg_basebackup", "loyalty_ops")

# What the guide asks for but no source here can measure, so no threshold is defined (docs/reports.md):
# "Error rate > 1%" needs the API's request logs; "CPU usage > 90% for > 5 minutes" needs a time series.

ALL_THRESHOLDS = (
    CONNECTIONS_PERCENT,
    DISK_PERCENT,
    MEMORY_PERCENT,
    API_LATENCY_MS,
    LONG_QUERY_SECONDS,
    XID_AGE,
    REPLICATION_LAG_SECONDS,
)

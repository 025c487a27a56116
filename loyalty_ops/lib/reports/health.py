"""The database half of the guide's morning checks, measured: reachability, connections, long-running
queries, pg_stat_statements, transaction ID age, replication, and the disk and memory of this machine.

:func:`probe_database` never raises for an unreachable server: it returns a snapshot with
``reachable=False`` and the error, so the report and its checks say so instead of the run crashing.
:func:`evaluate_database_health` turns a snapshot into one :class:`Verdict` per check, using
:mod:`loyalty_ops.lib.reports.thresholds`.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import psycopg

from loyalty_ops.lib.formatting import first_line, human_bytes
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.session import DatabaseUnreachable, connect, unreachable_message
from loyalty_ops.lib.reports import thresholds as th
from loyalty_ops.lib.reports.thresholds import Verdict

# Report connections give up rather than queue behind a lock or run away on a sick server.
SESSION_SETTINGS = ("SET statement_timeout = '120s'", "SET lock_timeout = '5s'", "SET application_name = 'loyalty_ops'")


def connect_for_reports(spec: ConnectionSpec, *, connect_timeout: Optional[int] = None) -> psycopg.Connection:
    """An autocommit connection with the reports' session settings; a failure to connect raises
    :class:`DatabaseUnreachable`."""
    conn = connect(spec, autocommit=True, connect_timeout=connect_timeout)
    for statement in SESSION_SETTINGS:
        conn.execute(statement)
    return conn


# Connections against max_connections are counted over the whole server (the limit is per server); the
# guide's per-database counts are kept alongside. Only client backends count toward max_connections.
CONNECTIONS_SQL = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE state = 'active') AS active,
       count(*) FILTER (WHERE state = 'idle') AS idle,
       count(*) FILTER (WHERE state LIKE 'idle in transaction%') AS idle_in_transaction,
       count(*) FILTER (WHERE datname = current_database()) AS database_total,
       count(*) FILTER (WHERE datname = current_database() AND state = 'active') AS database_active,
       count(*) FILTER (WHERE datname = current_database() AND state = 'idle') AS database_idle,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS reserved
FROM pg_stat_activity
WHERE backend_type = 'client backend'
"""

# The guide's slow-query listing, client backends only, without this session.
LONG_QUERIES_SQL = """
SELECT pid, usename, application_name, state,
       extract(epoch FROM clock_timestamp() - query_start)::float8 AS seconds,
       datname, left(query, %(max_query_chars)s) AS query
FROM pg_stat_activity
WHERE state <> 'idle' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
  AND query_start < clock_timestamp() - make_interval(secs => %(seconds)s)
ORDER BY query_start
LIMIT 50
"""

XID_SQL = """
SELECT datname, age(datfrozenxid)::bigint AS xid_age FROM pg_database ORDER BY 2 DESC
"""

REPLICAS_SQL = """
SELECT application_name, coalesce(client_addr::text, 'local') AS client, state, sync_state,
       extract(epoch FROM replay_lag)::float8 AS replay_lag_s,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes
FROM pg_stat_replication ORDER BY application_name
"""


@dataclass
class DiskUsage:
    path: str
    total_bytes: int
    used_bytes: int
    free_bytes: int

    @property
    def percent(self) -> float:
        # df's Use%: used / (used + available to unprivileged users)
        denominator = self.used_bytes + self.free_bytes
        return round(100.0 * self.used_bytes / denominator, 2) if denominator else 0.0


def disk_usage(path: Path) -> DiskUsage:
    """Usage of the filesystem holding ``path`` (or its nearest existing parent, before the first backup)."""
    probe = Path(path).expanduser().resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return DiskUsage(str(path), usage.total, usage.used, usage.free)


@dataclass
class MemoryUsage:
    source: str
    total_bytes: int
    used_bytes: int

    @property
    def percent(self) -> float:
        return round(100.0 * self.used_bytes / self.total_bytes, 2) if self.total_bytes else 0.0


def host_memory(meminfo: Path = Path("/proc/meminfo")) -> Optional[MemoryUsage]:
    """Memory of the machine this runs on, as ``free`` counts it (total minus available); None if unknown."""
    try:
        values = {}
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
        total, available = values["MemTotal"], values["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError):
        return None
    return MemoryUsage(f"host {os.uname().nodename}", total, total - available)


@dataclass
class DatabaseHealth:
    target: str
    reachable: bool
    error: Optional[str] = None
    connect_ms: Optional[float] = None
    query_ms: Optional[float] = None
    server_version: Optional[str] = None
    in_recovery: Optional[bool] = None
    connections: dict = field(default_factory=dict)
    long_queries: list[dict] = field(default_factory=list)
    long_query_seconds: float = th.LONG_QUERY_SECONDS.warn
    statements_installed: Optional[bool] = None
    statements_note: str = ""
    top_statements: list[dict] = field(default_factory=list)
    xid_ages: dict = field(default_factory=dict)
    replicas: list[dict] = field(default_factory=list)
    standby_lag_s: Optional[float] = None
    disk: Optional[DiskUsage] = None
    memory: Optional[MemoryUsage] = None

    @property
    def connections_percent(self) -> Optional[float]:
        c = self.connections
        if not c.get("max_connections"):
            return None
        return round(100.0 * c["total"] / c["max_connections"], 2)

    @property
    def max_xid_age(self) -> Optional[int]:
        return max(self.xid_ages.values()) if self.xid_ages else None

    @property
    def max_replication_lag_s(self) -> Optional[float]:
        lags = [r["replay_lag_s"] for r in self.replicas if r.get("replay_lag_s") is not None]
        if self.standby_lag_s is not None:
            lags.append(self.standby_lag_s)
        return max(lags) if lags else None

    def as_dict(self) -> dict:
        return asdict(self)


def _top_statements(conn: psycopg.Connection, health: DatabaseHealth, limit: int) -> None:
    row = conn.execute(
        "SELECT e.extnamespace::regnamespace::text FROM pg_extension e WHERE e.extname = 'pg_stat_statements'"
    ).fetchone()
    if row is None:
        health.statements_installed = False
        health.statements_note = (
            "pg_stat_statements is not installed: add it to shared_preload_libraries, restart, then "
            "CREATE EXTENSION pg_stat_statements in this database"
        )
        return
    from psycopg import sql

    mean, total = ("mean_exec_time", "total_exec_time") if conn.info.server_version >= 130000 else ("mean_time", "total_time")
    query = sql.SQL(
        "SELECT calls, {total}::float8, {mean}::float8, rows, left(query, 300) FROM {view} "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY {mean} DESC LIMIT %s"
    ).format(total=sql.Identifier(total), mean=sql.Identifier(mean), view=sql.Identifier(row[0], "pg_stat_statements"))
    try:
        rows = conn.execute(query, (limit,)).fetchall()
    except psycopg.Error as exc:
        health.statements_installed = False
        health.statements_note = f"pg_stat_statements is installed but cannot be read: {first_line(exc)}"
        return
    health.statements_installed = True
    health.statements_note = f"top {len(rows)} statements by mean time"
    health.top_statements = [
        {"calls": int(c), "total_ms": round(t, 2), "mean_ms": round(m, 3), "rows": int(r), "query": q}
        for c, t, m, r, q in rows
    ]


def probe_database(
    spec: ConnectionSpec,
    *,
    backup_path: Optional[Path] = None,
    long_query_seconds: float = th.LONG_QUERY_SECONDS.warn,
    top_statements: int = 10,
    connect_timeout: int = 10,
) -> DatabaseHealth:
    """Measure everything ``database_health`` reports. Local measurements (disk, memory) are taken even
    when the database cannot be reached."""
    health = DatabaseHealth(target=spec.redacted(), reachable=False, long_query_seconds=long_query_seconds)
    if backup_path is not None:
        health.disk = disk_usage(backup_path)
    health.memory = host_memory()
    started = time.perf_counter()
    try:
        conn = connect_for_reports(spec, connect_timeout=connect_timeout)
    except (DatabaseUnreachable, psycopg.Error) as exc:  # the latter: a session setting was refused
        health.error = str(exc) if isinstance(exc, DatabaseUnreachable) else unreachable_message(spec, exc)
        health.connect_ms = round(1000 * (time.perf_counter() - started), 1)
        return health
    try:
        health.connect_ms = round(1000 * (time.perf_counter() - started), 1)
        started = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        health.query_ms = round(1000 * (time.perf_counter() - started), 2)
        health.reachable = True
        health.server_version = conn.execute("SHOW server_version").fetchone()[0]
        health.in_recovery = bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])
        cur = conn.execute(CONNECTIONS_SQL)
        names = [d.name for d in cur.description]
        health.connections = dict(zip(names, (int(v) for v in cur.fetchone())))
        cur = conn.execute(LONG_QUERIES_SQL, {"seconds": long_query_seconds, "max_query_chars": 300})
        names = [d.name for d in cur.description]
        health.long_queries = [
            {**dict(zip(names, row)), "seconds": round(row[4], 1)} for row in cur.fetchall()
        ]
        _top_statements(conn, health, top_statements)
        health.xid_ages = {name: int(age) for name, age in conn.execute(XID_SQL).fetchall()}
        if health.in_recovery:
            lag = conn.execute(
                "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8"
            ).fetchone()[0]
            health.standby_lag_s = round(lag, 1) if lag is not None else None
        else:
            cur = conn.execute(REPLICAS_SQL)
            names = [d.name for d in cur.description]
            health.replicas = [dict(zip(names, row)) for row in cur.fetchall()]
    except psycopg.Error as exc:
        health.error = f"query failed on {spec.redacted()}: {first_line(exc)}"
    finally:
        conn.close()
    return health


def _unmeasured(reason: str) -> Verdict:
    return Verdict(th.WARN, f"not measured: {reason}", measured=False)


def evaluate_database_health(health: DatabaseHealth) -> dict[str, Verdict]:
    """One verdict per check name; the check names are the contract with the alerting sensors."""
    verdicts: dict[str, Verdict] = {}
    down = None if health.reachable and not health.error else (health.error or "database unreachable")
    if not health.reachable:
        verdicts["database_reachable"] = Verdict(th.ERROR, health.error or "database unreachable")
    elif health.error:
        verdicts["database_reachable"] = Verdict(th.ERROR, health.error)
    else:
        verdicts["database_reachable"] = Verdict(
            th.OK, f"connected in {health.connect_ms:.0f} ms, SELECT 1 in {health.query_ms:.1f} ms "
            f"(PostgreSQL {health.server_version})"
        )

    percent = health.connections_percent
    if down or percent is None:
        verdicts["database_connections"] = _unmeasured(down or "no connection statistics")
    else:
        c = health.connections
        level = th.CONNECTIONS_PERCENT.level(percent)
        verdicts["database_connections"] = Verdict(
            level,
            f"{c['total']} of max_connections {c['max_connections']} in use ({percent:.0f}%): {c['active']} active, "
            f"{c['idle']} idle, {c['idle_in_transaction']} idle in transaction "
            f"[{th.CONNECTIONS_PERCENT.describe()}]",
        )

    if down:
        verdicts["long_running_queries"] = _unmeasured(down)
    else:
        counted = [q for q in health.long_queries if q["application_name"] not in th.LONG_QUERY_IGNORED_APPLICATIONS]
        longest = max((q["seconds"] for q in counted), default=None)
        level = th.LONG_QUERY_SECONDS.level(longest) if longest is not None else th.OK
        if longest is not None and level == th.OK:
            level = th.WARN  # listed because it ran past the configured limit
        ignored = len(health.long_queries) - len(counted)
        if counted:
            worst_q = max(counted, key=lambda q: q["seconds"])
            message = (
                f"{len(counted)} statement(s) running longer than {health.long_query_seconds:g} s; longest "
                f"{worst_q['seconds']:.0f} s (pid {worst_q['pid']}, {worst_q['usename']}, "
                f"{worst_q['application_name'] or 'no application_name'}, {worst_q['state']})"
            )
        else:
            message = f"no statement running longer than {health.long_query_seconds:g} s"
        if ignored:
            message += f"; {ignored} from backup/restore/report tools not counted"
        verdicts["long_running_queries"] = Verdict(level, message)

    age = health.max_xid_age
    if down or age is None:
        verdicts["transaction_id_age"] = _unmeasured(down or "no databases listed")
    else:
        oldest = max(health.xid_ages, key=health.xid_ages.get)
        verdicts["transaction_id_age"] = Verdict(
            th.XID_AGE.level(age),
            f"oldest datfrozenxid age {age:,} in {oldest} ({100 * age / 2**31:.1f}% of the 2^31 wraparound "
            f"horizon) [{th.XID_AGE.describe()}]",
        )

    lag = health.max_replication_lag_s
    if down:
        verdicts["replication_lag"] = _unmeasured(down)
    elif not health.replicas and not health.in_recovery:
        verdicts["replication_lag"] = Verdict(th.OK, "no replicas are connected to this server")
    elif lag is None:
        verdicts["replication_lag"] = Verdict(th.OK, f"{len(health.replicas) or 1} replica(s), no lag reported (idle)")
    else:
        verdicts["replication_lag"] = Verdict(
            th.REPLICATION_LAG_SECONDS.level(lag),
            f"replay lag {lag:.1f} s across {len(health.replicas) or 1} replica(s) "
            f"[{th.REPLICATION_LAG_SECONDS.describe()}]",
        )

    if health.disk is None:
        verdicts["backup_volume_disk"] = _unmeasured("no backup directory configured")
    else:
        d = health.disk
        verdicts["backup_volume_disk"] = Verdict(
            th.DISK_PERCENT.level(d.percent),
            f"{d.percent:.0f}% used on the filesystem of {d.path} ({human_bytes(d.used_bytes)} used, {human_bytes(d.free_bytes)} "
            f"free of {human_bytes(d.total_bytes)}) [{th.DISK_PERCENT.describe()}]",
        )

    if health.memory is None:
        verdicts["host_memory"] = Verdict(th.OK, "not measurable here (/proc/meminfo unreadable)", measured=False)
    else:
        m = health.memory
        verdicts["host_memory"] = Verdict(
            th.MEMORY_PERCENT.level(m.percent),
            f"{m.percent:.0f}% of {human_bytes(m.total_bytes)} in use on {m.source} (total minus available) "
            f"[{th.MEMORY_PERCENT.describe()}]",
        )
    return verdicts


DATABASE_CHECK_DESCRIPTIONS = {
    "database_reachable": "The database accepts a connection and answers SELECT 1 (ERROR when it does not).",
    "database_connections": "Client connections on the server against max_connections "
    f"({th.CONNECTIONS_PERCENT.describe()}).",
    "long_running_queries": "Statements running longer than the limit (default 10 s, the guide's slow-query "
    f"listing); backup/restore tools are listed but not counted ({th.LONG_QUERY_SECONDS.describe()}).",
    "transaction_id_age": f"Oldest datfrozenxid age, transaction ID wraparound ({th.XID_AGE.describe()}).",
    "replication_lag": f"Replay lag of connected replicas, if any ({th.REPLICATION_LAG_SECONDS.describe()}).",
    "backup_volume_disk": f"Disk use of the backup volume, like df -h ({th.DISK_PERCENT.describe()}).",
    "host_memory": f"Memory in use on the machine running Dagster, like free -h ({th.MEMORY_PERCENT.describe()}).",
}

"""The report assets: ``bloat_report``, ``database_size_report``, ``database_health``,
``application_health`` and ``morning_report`` (group reports).

Each materialization records numbers as numbers so the UI plots them over time, a markdown report, and
(for health) one asset check per concern whose severity comes from ``lib/reports/thresholds.py``.
"""

import time
from datetime import datetime, timezone
from typing import Any, Optional

import dagster as dg
import psycopg
from pydantic import Field

from loyalty_ops.defs.reports.resources import ApplicationEndpoints
from loyalty_ops.defs.resources import BackupStorage, PostgresTarget
from loyalty_ops.lib.pg.session import DatabaseUnreachable, unreachable_message
from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.reports import application as app
from loyalty_ops.lib.reports import bloat as bloat_lib
from loyalty_ops.lib.reports import health as health_lib
from loyalty_ops.lib.reports import render
from loyalty_ops.lib.reports import sizes as sizes_lib
from loyalty_ops.lib.reports import thresholds as th

OWNERS = ["team:platform"]
GROUP = "reports"

BLOAT_REPORT_KEY = dg.AssetKey("bloat_report")
SIZE_REPORT_KEY = dg.AssetKey("database_size_report")
DATABASE_HEALTH_KEY = dg.AssetKey("database_health")
APPLICATION_HEALTH_KEY = dg.AssetKey("application_health")
MORNING_REPORT_KEY = dg.AssetKey("morning_report")

# Bounds on what goes into one materialization's metadata, whatever the number of tables.
MAX_RELATIONS_IN_METADATA = 50
MAX_TABLES_FOR_GROWTH = 500


def to_check_result(asset_key: dg.AssetKey, name: str, verdict: th.Verdict, **metadata: Any) -> dg.AssetCheckResult:
    """A Verdict as an asset check result: ok passes; warn/error fail with that severity (the paging contract)."""
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=name,
        passed=verdict.passed,
        severity=dg.AssetCheckSeverity.ERROR if verdict.level == th.ERROR else dg.AssetCheckSeverity.WARN,
        description=verdict.message,
        metadata={
            "level": verdict.level,
            "measured": verdict.measured,
            # A check that could not be measured (its source is down, and another check says so) fails at
            # WARN in the UI but asks the pager for "info" only, so one outage is one page.
            **({"loyalty_ops/severity": "info"} if not verdict.measured and not verdict.passed else {}),
            **metadata,
        },
    )


def _connect(postgres: PostgresTarget) -> psycopg.Connection:
    spec = postgres.spec()
    try:
        return health_lib.connect_for_reports(spec)
    except (DatabaseUnreachable, psycopg.Error) as exc:  # the latter: a session setting was refused
        raise dg.Failure(
            description=str(exc) if isinstance(exc, DatabaseUnreachable) else unreachable_message(spec, exc),
            metadata={"target": spec.redacted()},
        ) from None


def _relation_table(rows: list[bloat_lib.RelationBloat]) -> dg.TableMetadataValue:
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("relation", "string"),
            dg.TableColumn("kind", "string"),
            dg.TableColumn("table", "string"),
            dg.TableColumn("size_bytes", "int"),
            dg.TableColumn("est_bloat_bytes", "int"),
            dg.TableColumn("est_bloat_pct", "float"),
            dg.TableColumn("exact_bloat_pct", "float"),
        ]
    )
    records = [
        dg.TableRecord(
            {
                "relation": r.name,
                "kind": r.kind,
                "table": f"{r.schema}.{r.table}",
                "size_bytes": r.real_bytes,
                "est_bloat_bytes": r.bloat_bytes or 0,
                "est_bloat_pct": float(r.bloat_pct or 0.0),
                "exact_bloat_pct": float(r.exact_bloat_pct) if r.exact_bloat_pct is not None else None,
            }
        )
        for r in rows
    ]
    return dg.MetadataValue.table(records, schema)


class BloatReportConfig(dg.Config):
    """Launchpad options for the bloat report."""

    exact_top_n: int = Field(
        default=10,
        description="How many of the most bloated tables and indexes get exact figures from pgstattuple "
        "(pgstattuple_approx / pgstatindex read the relation). 0 skips them.",
    )


@dg.asset(key=BLOAT_REPORT_KEY, group_name=GROUP, kinds={"postgres"}, owners=OWNERS)
def bloat_report(context: dg.AssetExecutionContext, config: BloatReportConfig, postgres: PostgresTarget) -> dg.MaterializeResult:
    """Estimated bloat of every table and btree index (statistics-based, catalog only), with exact figures
    from `pgstattuple_approx`/`pgstatindex` for the worst few when the pgstattuple extension is installed.
    Numbers per materialization (total, tables, indexes, worst table) plot bloat over time."""
    if config.exact_top_n < 0:
        raise dg.Failure("exact_top_n must be 0 or more: set it to 0 to skip pgstattuple, or e.g. 10")
    with _connect(postgres) as conn:
        started = time.perf_counter()
        rows = bloat_lib.estimate_bloat(conn)
        estimate_s = time.perf_counter() - started
        context.log.info(f"estimated bloat of {len(rows)} relations in {estimate_s:.2f} s")
        started = time.perf_counter()
        state = bloat_lib.add_exact_figures(conn, rows, config.exact_top_n)
        exact_s = time.perf_counter() - started
        context.log.info(f"{state.explain('pgstattuple')}; exact figures took {exact_s:.2f} s")
        database = conn.info.dbname
    tables = [r for r in rows if r.kind == "table"]
    indexes = [r for r in rows if r.kind == "index"]
    top_tables = bloat_lib.top_bloated(rows, "table", MAX_RELATIONS_IN_METADATA)
    top_indexes = bloat_lib.top_bloated(rows, "index", MAX_RELATIONS_IN_METADATA)
    worst = top_tables[0] if top_tables else None
    return dg.MaterializeResult(
        metadata={
            "database": database,
            "total_bloat_bytes": sum(r.bloat_bytes or 0 for r in rows),
            "table_bloat_bytes": sum(r.bloat_bytes or 0 for r in tables),
            "index_bloat_bytes": sum(r.bloat_bytes or 0 for r in indexes),
            "tables": len(tables),
            "indexes": len(indexes),
            "not_estimated": sum(1 for r in rows if not r.estimable),
            "worst_table": worst.name if worst else "",
            "worst_table_bloat_bytes": worst.bloat_bytes if worst else 0,
            "worst_table_bloat_pct": float(worst.bloat_pct) if worst else 0.0,
            "pgstattuple_installed": state.installed,
            "exact_top_n": config.exact_top_n if state.installed else 0,
            "estimate_s": round(estimate_s, 3),
            "exact_s": round(exact_s, 3),
            "report": dg.MetadataValue.md(render.bloat_markdown(rows, state, duration_s=estimate_s)),
            "most_bloated": _relation_table((top_tables + top_indexes)[: MAX_RELATIONS_IN_METADATA]),
            "top_tables": dg.MetadataValue.json([r.as_dict() for r in top_tables]),
            "top_indexes": dg.MetadataValue.json([r.as_dict() for r in top_indexes]),
        }
    )


class SizeReportConfig(dg.Config):
    """Launchpad options for the size report."""

    top_n: int = Field(default=10, description="How many tables to list by total, table and index size (the guide uses 10).")


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> tuple[Optional[dict], Optional[float], Optional[str]]:
    """Plain metadata values, timestamp and run id of the newest materialization of ``key``."""
    entry = instance.get_latest_materialization_event(key)
    if entry is None or entry.asset_materialization is None:
        return None, None, None
    values = {k: getattr(v, "value", v) for k, v in entry.asset_materialization.metadata.items()}
    return values, entry.timestamp, entry.run_id


@dg.asset(key=SIZE_REPORT_KEY, group_name=GROUP, kinds={"postgres"}, owners=OWNERS)
def database_size_report(
    context: dg.AssetExecutionContext, config: SizeReportConfig, postgres: PostgresTarget
) -> dg.MaterializeResult:
    """The database size and the top tables by total, table and index size (the guide's queries), with
    growth since the previous materialization of this asset."""
    if config.top_n < 1:
        raise dg.Failure("top_n must be at least 1 (the guide lists 10)")
    previous, previous_ts, _ = latest_metadata(context.instance, SIZE_REPORT_KEY)
    with _connect(postgres) as conn:
        snapshot = sizes_lib.size_snapshot(conn)
    current_sizes = {t.name: t.total_bytes for t in snapshot.top("total_bytes", MAX_TABLES_FOR_GROWTH)}
    previous_sizes = dict((previous or {}).get("table_total_bytes") or {})
    previous_bytes = (previous or {}).get("database_bytes")
    previous_at = (
        datetime.fromtimestamp(previous_ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if previous_ts else None
    )
    growth = sizes_lib.table_growth(previous_sizes, current_sizes) if previous else []
    dropped = sizes_lib.dropped_tables(previous_sizes, current_sizes) if previous else []
    metadata: dict[str, Any] = {
        "database": snapshot.database,
        "database_bytes": snapshot.database_bytes,
        "database_size": human_bytes(snapshot.database_bytes),
        "table_count": snapshot.table_count,
        "total_table_bytes": sum(t.table_bytes for t in snapshot.tables),
        "total_index_bytes": sum(t.index_bytes for t in snapshot.tables),
        "total_toast_bytes": sum(t.toast_bytes for t in snapshot.tables),
        "largest_table": snapshot.top("total_bytes", 1)[0].name if snapshot.tables else "",
        "report": dg.MetadataValue.md(
            render.sizes_markdown(snapshot, top_n=config.top_n, previous_database_bytes=previous_bytes,
                                  previous_at=previous_at, growth=growth, dropped=dropped)
        ),
        "top_tables": dg.MetadataValue.table(
            [dg.TableRecord({"table": t.name, "total_bytes": t.total_bytes, "table_bytes": t.table_bytes,
                             "index_bytes": t.index_bytes, "toast_bytes": t.toast_bytes, "estimated_rows": t.estimated_rows})
             for t in snapshot.top("total_bytes", config.top_n)],
            dg.TableSchema(columns=[dg.TableColumn("table", "string")] + [
                dg.TableColumn(c, "int") for c in ("total_bytes", "table_bytes", "index_bytes", "toast_bytes", "estimated_rows")
            ]),
        ),
        "table_total_bytes": dg.MetadataValue.json(current_sizes),
    }
    if previous_bytes is not None:
        metadata["growth_bytes"] = snapshot.database_bytes - int(previous_bytes)
        metadata["growth_pct"] = round(100.0 * (snapshot.database_bytes - previous_bytes) / previous_bytes, 3) if previous_bytes else 0.0
        metadata["growth_since"] = previous_at or ""
        metadata["grown_tables"] = sum(1 for g in growth if (g.delta_bytes or 0) > 0)
    context.log.info(f"{snapshot.database}: {human_bytes(snapshot.database_bytes)} in {snapshot.table_count} tables")
    return dg.MaterializeResult(metadata=metadata)


class HealthConfig(dg.Config):
    """Launchpad options for database health. The defaults are the guide's."""

    long_query_seconds: float = Field(
        default=th.LONG_QUERY_SECONDS.warn,
        description="List statements running longer than this many seconds (the guide uses 10).",
    )
    top_statements: int = Field(default=10, description="How many pg_stat_statements entries to list by mean time.")
    connect_timeout_s: int = Field(default=10, description="Seconds to wait for a connection before calling the database unreachable.")


DATABASE_CHECK_SPECS = [
    dg.AssetCheckSpec(name, asset=DATABASE_HEALTH_KEY, description=description)
    for name, description in health_lib.DATABASE_CHECK_DESCRIPTIONS.items()
]


@dg.asset(key=DATABASE_HEALTH_KEY, group_name=GROUP, kinds={"postgres"}, owners=OWNERS, check_specs=DATABASE_CHECK_SPECS)
def database_health(
    context: dg.AssetExecutionContext, config: HealthConfig, postgres: PostgresTarget, backup_storage: BackupStorage
) -> dg.MaterializeResult:
    """Every 15 minutes: connectivity and latency, connections against max_connections, statements running
    longer than 10 s, top statements by mean time (pg_stat_statements), transaction ID age, replication lag,
    and disk use of the backup volume and memory of this machine. An unreachable database is a failed
    `database_reachable` check (ERROR), not a failed run."""
    spec = postgres.spec()
    health = health_lib.probe_database(
        spec,
        backup_path=backup_storage.path,
        long_query_seconds=config.long_query_seconds,
        top_statements=config.top_statements,
        connect_timeout=config.connect_timeout_s,
    )
    verdicts = health_lib.evaluate_database_health(health)
    status = th.worst(v.level for v in verdicts.values())
    for name, verdict in verdicts.items():
        if verdict.level != th.OK:
            context.log.warning(f"{name}: {verdict.level.upper()}: {verdict.message}")
    c = health.connections
    metadata: dict[str, Any] = {
        "status": status,
        "target": health.target,
        "reachable": health.reachable,
        "report": dg.MetadataValue.md(render.health_markdown(health, verdicts)),
        "pg_stat_statements": health.statements_note or "not checked",
    }
    if health.connect_ms is not None:
        metadata["connect_ms"] = float(health.connect_ms)
    if health.reachable:
        metadata.update(
            {
                "query_ms": float(health.query_ms or 0.0),
                "connections_total": c.get("total", 0),
                "connections_active": c.get("active", 0),
                "connections_idle": c.get("idle", 0),
                "connections_idle_in_transaction": c.get("idle_in_transaction", 0),
                "max_connections": c.get("max_connections", 0),
                "connections_percent": float(health.connections_percent or 0.0),
                "long_running_queries": len(health.long_queries),
                "longest_query_s": float(max((q["seconds"] for q in health.long_queries), default=0.0)),
                "max_xid_age": int(health.max_xid_age or 0),
                "replicas": len(health.replicas),
                "top_statements": dg.MetadataValue.json(health.top_statements),
                "long_queries": dg.MetadataValue.json(
                    [{k: (str(v) if k not in ("pid", "seconds") else v) for k, v in q.items()} for q in health.long_queries]
                ),
            }
        )
        if health.max_replication_lag_s is not None:
            metadata["replication_lag_s"] = float(health.max_replication_lag_s)
    if health.error:
        metadata["error"] = health.error
    if health.disk is not None:
        metadata.update(
            {
                "backup_volume": health.disk.path,
                "disk_percent": float(health.disk.percent),
                "disk_free_bytes": int(health.disk.free_bytes),
                "disk_total_bytes": int(health.disk.total_bytes),
            }
        )
    if health.memory is not None:
        metadata["host_memory_percent"] = float(health.memory.percent)
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            to_check_result(DATABASE_HEALTH_KEY, name, v, database=spec.dbname) for name, v in verdicts.items()
        ],
    )


APPLICATION_CHECK_SPECS = [
    dg.AssetCheckSpec(name, asset=APPLICATION_HEALTH_KEY, description=description)
    for name, description in app.APPLICATION_CHECK_DESCRIPTIONS.items()
]


@dg.asset(key=APPLICATION_HEALTH_KEY, group_name=GROUP, kinds={"redis"}, owners=OWNERS, check_specs=APPLICATION_CHECK_SPECS)
def application_health(context: dg.AssetExecutionContext, application_endpoints: ApplicationEndpoints) -> dg.MaterializeResult:
    """The guide's `curl /health` and `curl /ready` (top-level status, every sub-check, latency) and
    `redis-cli INFO memory` / `INFO stats` (hit rate, memory). Both are optional: set LOYALTY_API_URL and
    LOYALTY_REDIS_URL. An endpoint that does not answer is a failed check, never a failed run."""
    timeout = application_endpoints.timeout_s
    verdicts: dict[str, th.Verdict] = {}
    metadata: dict[str, Any] = {}
    api_results = None
    if application_endpoints.api_url:
        api_results = app.probe_api(application_endpoints.api_url, timeout)
        verdicts["api_healthy"] = app.evaluate_api_status(api_results)
        verdicts["api_latency"] = app.evaluate_api_latency(api_results)
        metadata["api_url"] = app.redact_url(application_endpoints.api_url)
        for path, result in api_results.items():
            name = path.strip("/")
            metadata[f"{name}_status"] = result.status or ("unreachable" if not result.reachable else "unknown")
            if result.reachable and result.latency_ms is not None:
                metadata[f"{name}_latency_ms"] = float(result.latency_ms)
        metadata["api"] = dg.MetadataValue.json({path: r.as_dict() for path, r in api_results.items()})
    else:
        verdicts["api_healthy"] = app.not_configured("LOYALTY_API_URL")
        verdicts["api_latency"] = app.not_configured("LOYALTY_API_URL")
    redis_health = None
    if application_endpoints.redis_url:
        redis_health = app.probe_redis(application_endpoints.redis_url, timeout)
        verdicts.update(app.evaluate_redis(redis_health))
        metadata["redis_url"] = redis_health.url
        metadata["redis_reachable"] = redis_health.reachable
        if redis_health.reachable:
            if redis_health.hit_rate is not None:
                metadata["redis_hit_rate_pct"] = float(redis_health.hit_rate)
            metadata["redis_used_memory_bytes"] = int(redis_health.used_memory or 0)
            if redis_health.memory_percent is not None:
                metadata["redis_memory_percent"] = float(redis_health.memory_percent)
            metadata["redis_evicted_keys"] = int(redis_health.evicted_keys or 0)
        metadata["redis"] = dg.MetadataValue.json(redis_health.as_dict())
    else:
        verdicts["redis_reachable"] = app.not_configured("LOYALTY_REDIS_URL")
        verdicts["redis_memory"] = app.not_configured("LOYALTY_REDIS_URL")
    status = th.worst(v.level for v in verdicts.values())
    for name, verdict in verdicts.items():
        if verdict.level != th.OK:
            context.log.warning(f"{name}: {verdict.level.upper()}: {verdict.message}")
    metadata["status"] = status
    metadata["configured"] = bool(application_endpoints.api_url or application_endpoints.redis_url)
    metadata["report"] = dg.MetadataValue.md(render.application_markdown(api_results, redis_health, verdicts))
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[to_check_result(APPLICATION_HEALTH_KEY, name, v) for name, v in verdicts.items()],
    )

"""``wal_archive_settings`` (what the database server needs for archiving, generated) and ``wal_archive_health``
(every 5 minutes: the server's archiver and the bucket's WAL, judged; its checks page through the alerting
sensors and resolve when archiving recovers). The measured lag is plotted: it is the live RPO."""

import time

import dagster as dg

from loyalty_ops.defs.pitr.resources import PitrResource
from loyalty_ops.defs.resources import OffsiteStorage, PostgresTarget
from loyalty_ops.lib.formatting import markdown_table
from loyalty_ops.lib.pg.session import connect
from loyalty_ops.lib.pitr.archive import bucket_wal, judge, read_server_archiver, wal_objects
from loyalty_ops.lib.pitr.config import ENGINE_PIN, alter_system_sql, compose_change, postgresql_conf, server_settings
from loyalty_ops.lib.pitr.engine import restore_command

HEALTH_KEY = dg.AssetKey("wal_archive_health")
LAG_CHECK = "wal_archive_lag_within_limit"
ARCHIVING_CHECK = "wal_archiving_succeeds"
BUCKET_CHECK = "wal_archive_complete_in_bucket"

HEALTH_CHECKS = [
    dg.AssetCheckSpec(LAG_CHECK, asset=HEALTH_KEY, description="The oldest WAL not yet in the bucket is younger than "
                      "LOYALTY_PITR_MAX_LAG_SECONDS (default 300): the live RPO is within its limit."),
    dg.AssetCheckSpec(ARCHIVING_CHECK, asset=HEALTH_KEY, description="archive_mode is on, wal_level replica, and the "
                      "last archive_command attempt succeeded (pg_stat_archiver)."),
    dg.AssetCheckSpec(BUCKET_CHECK, asset=HEALTH_KEY, description="The bucket holds the newest WAL the server says it "
                      "archived, and every segment since the last base backup (no gap)."),
]


def require_enabled(pitr: PitrResource) -> None:
    if not pitr.enabled:
        raise dg.Failure("point-in-time recovery is off: set LOYALTY_PITR_ENABLED=true (with LOYALTY_S3_BUCKET) once the "
                         "server archives (see the wal_archive_settings asset and docs/pitr.md)")


@dg.asset(group_name="pitr", kinds={"postgres", "s3"}, owners=["team:platform"])
def wal_archive_settings(pitr: PitrResource, postgres: PostgresTarget, offsite: OffsiteStorage) -> dg.MaterializeResult:
    """The database server's settings for continuous archiving through barman-cloud (wal_level, archive_mode,
    archive_command with the bucket, prefix and server name, archive_timeout), the restore_command recovery uses,
    the same as ALTER SYSTEM statements, and the change the docker-compose db service needs. Compares them with
    what the live server runs."""
    location = pitr.location(offsite, postgres)
    access = pitr.access(offsite)
    options = pitr.archive_options()
    wanted = server_settings(pitr.server_engine_dir(), location, access, pitr.archive_timeout_seconds, options)
    restore_cmd = restore_command(pitr.server_engine_dir(), location, access)
    live: dict[str, str] = {}
    try:
        with connect(postgres.spec(), connect_timeout=10) as conn:
            for name in wanted:
                live[name] = conn.execute("SELECT setting || coalesce(unit, '') FROM pg_settings WHERE name = %s",
                                          (name,)).fetchone()[0]
    except Exception as exc:  # the settings are still worth showing
        live = {name: f"(unreadable: {type(exc).__name__})" for name in wanted}
    rows = [[name, f"`{value}`", f"`{live.get(name, '')}`", "yes" if live.get(name, "").rstrip("s") == value.rstrip("s") else "**no**"]
            for name, value in wanted.items()]
    matches = all(row[3] == "yes" for row in rows)
    return dg.MaterializeResult(metadata={
        "server_matches": matches,
        "destination": location.describe(),
        "settings": dg.MetadataValue.md(markdown_table(["setting", "wanted", "live server", "matches"], rows)),
        "postgresql_conf": dg.MetadataValue.md(f"```\n{postgresql_conf(wanted, restore_cmd)}```"),
        "alter_system": dg.MetadataValue.md(f"```sql\n{alter_system_sql(wanted)}```"),
        "docker_compose": dg.MetadataValue.md(f"```\n{compose_change(wanted, packages=options.packages())}```"),
        "wal_compression": options.describe(),
        "engine_packages": " ".join((ENGINE_PIN, *options.packages())),
        "restore_command": restore_cmd,
    })


@dg.asset(key=HEALTH_KEY, group_name="pitr", kinds={"postgres", "s3"}, owners=["team:platform"], check_specs=HEALTH_CHECKS,
          tags={"loyalty_ops/criticality": "critical"})
def wal_archive_health(context: dg.AssetExecutionContext, pitr: PitrResource, postgres: PostgresTarget,
                       offsite: OffsiteStorage) -> dg.MaterializeResult:
    """The WAL archive, checked at both ends: pg_stat_archiver (last archived WAL and time, failures) and the
    segments waiting in pg_wal on the server; the newest WAL really in the bucket and no gap since the last base
    backup. lag_s (the oldest WAL not yet in the bucket) is the live RPO."""
    require_enabled(pitr)
    started = time.monotonic()
    engine = pitr.engine(offsite, postgres)
    backups = [b for b in engine.list_backups() if b.complete]
    since = backups[-1].begin_wal if backups else None
    with connect(postgres.spec(), connect_timeout=10) as conn:
        server = read_server_archiver(conn)
    bucket = bucket_wal(wal_objects(offsite.client(), engine.location, since), since, server.segment_bytes)
    health = judge(server, bucket, pitr.max_lag_seconds)
    for problem in health.problems:
        context.log.error(problem)
    database = postgres.database_name
    newest = bucket.newest
    metadata = {
        "lag_s": round(health.lag_s, 1),
        "max_lag_s": float(pitr.max_lag_seconds),
        "healthy": health.healthy,
        "ready_segments": server.ready_segments,
        "failed_count": server.failed_count,
        "archived_count": server.archived_count,
        "last_archived_wal": server.last_archived_wal or "",
        "last_archived_time": server.last_archived_time.isoformat() if server.last_archived_time else "",
        "last_failed_wal": server.last_failed_wal or "",
        "last_failed_time": server.last_failed_time.isoformat() if server.last_failed_time else "",
        "current_wal": server.current_wal,
        "newest_in_bucket": newest.name if newest else "",
        "newest_in_bucket_at": newest.last_modified.isoformat() if newest else "",
        "segments_since_base_backup": bucket.segments,
        "missing_segments": dg.MetadataValue.json(list(bucket.missing)),
        "since_base_backup": backups[-1].backup_id if backups else "",
        "destination": engine.location.describe(),
        "problems": dg.MetadataValue.json(list(health.problems)),
        "duration_s": round(time.monotonic() - started, 3),
    }
    common = {"database": database, "lag_s": round(health.lag_s, 1)}
    lag_text = f"oldest WAL not in the bucket: {health.lag_s:.0f} s (limit {pitr.max_lag_seconds:.0f} s)"
    checks = [
        dg.AssetCheckResult(check_name=LAG_CHECK, passed=health.lag_ok, severity=dg.AssetCheckSeverity.ERROR,
                            description=lag_text if health.lag_ok else next(p for p in health.problems if "oldest WAL" in p),
                            metadata={**common, "ready_segments": server.ready_segments}),
        dg.AssetCheckResult(check_name=ARCHIVING_CHECK, passed=health.archiving_ok, severity=dg.AssetCheckSeverity.ERROR,
                            description="archiving succeeds" if health.archiving_ok else "; ".join(
                                p for p in health.problems if "archive_command" in p or "archive_mode" in p or "wal_level" in p),
                            metadata={**common, "failed_count": server.failed_count,
                                      "last_failed_wal": server.last_failed_wal or ""}),
        dg.AssetCheckResult(check_name=BUCKET_CHECK, passed=health.bucket_ok, severity=dg.AssetCheckSeverity.ERROR,
                            description=(f"{bucket.segments} segment(s) since {since or 'the first'}, newest "
                                         f"{newest.name if newest else 'none'}, no gap") if health.bucket_ok else "; ".join(
                                p for p in health.problems if "bucket" in p),
                            metadata={**common, "missing": len(bucket.missing)}),
    ]
    context.log.info(f"WAL archive: lag {health.lag_s:.0f} s, {'healthy' if health.healthy else 'UNHEALTHY'}")
    return dg.MaterializeResult(metadata=metadata, check_results=checks)

"""``morning_report``: the guide's morning checks read from history in one markdown page.

It measures nothing itself except the backup volume's disk use: it reads the newest materializations
(and the check results of their runs) of ``database_backup``/``offsite_backup_copy`` (via
``defs/backups/history.py``), ``restore_drill``, ``weekly_maintenance``, ``database_health``,
``application_health``, ``bloat_report``, ``database_size_report`` and, when it exists,
``container_health``. Assets that never ran are reported as such ("never ran").
"""

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import dagster as dg

from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, INTEGRITY_CHECK_NAMES, OFFSITE_ASSET_KEY, recent_backups
from loyalty_ops.defs.reports.assets import (
    APPLICATION_HEALTH_KEY,
    BLOAT_REPORT_KEY,
    DATABASE_HEALTH_KEY,
    GROUP,
    MORNING_REPORT_KEY,
    OWNERS,
    SIZE_REPORT_KEY,
    latest_metadata,
)
from loyalty_ops.defs.pitr.report import pitr_markdown, pitr_summary
from loyalty_ops.defs.resources import BackupStorage, PostgresTarget
from loyalty_ops.lib.reports import health as health_lib
from loyalty_ops.lib.retention.classify import classify_local
from loyalty_ops.lib.backup.inventory import scan_backup_dir
from loyalty_ops.lib.reports import render

MAINTENANCE_KEY = dg.AssetKey("weekly_maintenance")
RESTORE_DRILL_KEY = dg.AssetKey("restore_drill")
CONTAINER_HEALTH_KEY = dg.AssetKey("container_health")
RETENTION_PLAN_KEY = dg.AssetKey("retention_plan")


def _at(ts: Optional[float]) -> Optional[datetime]:
    return datetime.fromtimestamp(ts, tz=timezone.utc) if ts is not None else None


def check_outcomes(instance: dg.DagsterInstance, key: dg.AssetKey, run_id: Optional[str]) -> list[render.CheckOutcome]:
    """The check evaluations for ``key`` recorded in the run that materialized it last."""
    if run_id is None:
        return []
    latest: dict[str, render.CheckOutcome] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if evaluation is None or evaluation.asset_key != key:
            continue
        latest[evaluation.check_name] = render.CheckOutcome(
            asset=key.to_user_string(),
            name=evaluation.check_name,
            passed=bool(evaluation.passed),
            severity=evaluation.severity.value if evaluation.severity else "ERROR",
            description=evaluation.description or "",
        )
    return list(latest.values())


def _backup_summary(instance: dg.DagsterInstance) -> Optional[dict]:
    backups = recent_backups(instance, limit=1)
    if not backups:
        return None
    latest = backups[0]
    summary = {
        "filename": latest.metadata.get("filename"),
        "at": _at(latest.timestamp),
        "bytes": latest.bytes,
        "verified": latest.verified,
        "failed_checks": [n for n in INTEGRITY_CHECK_NAMES if latest.checks.get(n) is not True],
        "offsite": None,
    }
    offsite, offsite_ts, _ = latest_metadata(instance, OFFSITE_ASSET_KEY)
    if offsite and offsite.get("filename") == summary["filename"]:
        summary["offsite"] = {"key": offsite.get("key"), "verified": bool(offsite.get("verified")), "at": _at(offsite_ts)}
    return summary


def left_alone_names(instance: dg.DagsterInstance, database: str, backup_path) -> list[str]:
    """Names in the backup directory (now) and under the S3 prefix (as the last retention plan listed
    them) that the one strict parser does not accept as this database's backups or their sidecars."""
    names = []
    try:
        local = scan_backup_dir(Path(backup_path))
    except FileNotFoundError:
        local = ()
    for f in local:
        parsed, _suffix, why = classify_local(f.name, database)
        if parsed is None:
            names.append(f"local `{f.name}` ({why})")
    meta, _ts, _run = latest_metadata(instance, RETENTION_PLAN_KEY)
    listed = (meta or {}).get("left_alone")
    if isinstance(listed, dict):
        names += [f"s3 `{name}`" for name in listed.get("s3") or ()]
    return names


def _simple_metadata(values: dict) -> dict:
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool)) and len(str(v)) <= 80}


def gather_morning_inputs(instance: dg.DagsterInstance, database: str, backup_path, now: Optional[datetime] = None) -> render.MorningInputs:
    now = now or datetime.now(timezone.utc)
    inputs = render.MorningInputs(now=now, database=database, backup=_backup_summary(instance))

    meta, ts, _ = latest_metadata(instance, MAINTENANCE_KEY)
    if meta is not None:
        inputs.maintenance = {"at": _at(ts), "metadata": meta}
    meta, ts, _ = latest_metadata(instance, RESTORE_DRILL_KEY)
    if meta is not None:
        inputs.restore_drill = {"at": _at(ts), "metadata": meta}

    for key in (DATABASE_HEALTH_KEY, APPLICATION_HEALTH_KEY):
        meta, ts, run_id = latest_metadata(instance, key)
        if meta is None:
            continue
        if key == DATABASE_HEALTH_KEY:
            inputs.health_at = _at(ts)
        inputs.checks += check_outcomes(instance, key, run_id)

    meta, ts, _ = latest_metadata(instance, BLOAT_REPORT_KEY)
    if meta is not None:
        inputs.bloat_at = _at(ts)
        inputs.bloated_tables = list(meta.get("top_tables") or [])[:5]

    meta, ts, _ = latest_metadata(instance, SIZE_REPORT_KEY)
    if meta is not None:
        inputs.sizes = {"at": _at(ts), "database_bytes": meta.get("database_bytes"), "growth_bytes": meta.get("growth_bytes")}

    disk = health_lib.disk_usage(backup_path)
    inputs.disk = {"path": disk.path, "percent": disk.percent, "used": disk.used_bytes, "free": disk.free_bytes,
                   "total": disk.total_bytes}

    inputs.left_alone = left_alone_names(instance, database, backup_path)

    meta, ts, run_id = latest_metadata(instance, CONTAINER_HEALTH_KEY)
    if meta is not None:
        inputs.containers = {"at": _at(ts), "metadata": _simple_metadata(meta),
                             "checks": check_outcomes(instance, CONTAINER_HEALTH_KEY, run_id)}
    return inputs


@dg.asset(
    key=MORNING_REPORT_KEY,
    group_name=GROUP,
    kinds={"markdown"},
    owners=OWNERS,
    deps=[BACKUP_ASSET_KEY, OFFSITE_ASSET_KEY, DATABASE_HEALTH_KEY, APPLICATION_HEALTH_KEY, BLOAT_REPORT_KEY, SIZE_REPORT_KEY],
)
def morning_report(context: dg.AssetExecutionContext, postgres: PostgresTarget, backup_storage: BackupStorage) -> dg.MaterializeResult:
    """The guide's morning checks in one page: last backup (age, size, verified, offsite), last restore
    drill, last maintenance, health status (every check of `database_health`, `application_health`), the
    five most bloated tables, disk of the backup volume and database size, `container_health` when
    that asset exists, and point-in-time recovery (archive lag now and its 24 h max, last base backup,
    last PITR drill with RPO and RTO). Read from the assets' history; it does not query the database."""
    inputs = gather_morning_inputs(context.instance, postgres.database_name, backup_storage.path)
    failing = [c for c in inputs.checks if not c.passed]
    pitr = pitr_summary(context.instance)
    metadata = {
        "status": inputs.status,
        "report": dg.MetadataValue.md(render.morning_markdown(inputs) + pitr_markdown(pitr)),
        "backup_verified": bool(inputs.backup and inputs.backup.get("verified")),
        "backup_offsite_verified": bool(inputs.backup and inputs.backup.get("offsite") and inputs.backup["offsite"]["verified"]),
        "maintenance_ran": inputs.maintenance is not None,
        "failing_checks": len(failing),
        "failing_check_names": ", ".join(f"{c.asset}.{c.name}" for c in failing),
        "disk_percent": float(inputs.disk["percent"]) if inputs.disk else 0.0,
        "left_alone": len(inputs.left_alone),
    }
    if inputs.backup_age_h is not None:
        metadata["backup_age_h"] = float(inputs.backup_age_h)
    if pitr["lag_now_s"] is not None:
        metadata["pitr_lag_now_s"] = pitr["lag_now_s"]
        metadata["pitr_lag_max_24h_s"] = float(pitr["lag_max_24h_s"] or 0.0)
    if pitr["drill"] is not None:
        metadata["pitr_drill_passed"] = bool(pitr["drill"][1].get("passed"))
    context.log.info(f"morning report: {inputs.status.upper()}, {len(failing)} failing check(s)")
    return dg.MaterializeResult(metadata=metadata)

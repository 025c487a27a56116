"""``restore_drill``: after a nightly backup, prove it restores. Restores the newest backup into a scratch
database, compares every table's row count, the catalog counts and the materialized views with the
manifest, records the RTO, and always drops the scratch database. Its check ``restore_drill_matches_source`` fails (and the run with
it, so it pages) when any step or table does not match."""

from typing import Iterator, Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, metadata_values, recent_backups
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.defs.restore.common import restore_environment
from loyalty_ops.defs.restore.history import DRILL_ASSET_KEY
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.lib.concurrency import DATABASE_POOL
from loyalty_ops.lib.restore.placement import run_placed_drill
from loyalty_ops.lib.restore.plan import BackupRef, drill_due
from loyalty_ops.lib.restore.verify import row_count_table

DRILL_CHECK_NAME = "restore_drill_matches_source"


class DrillConfig(dg.Config):
    """Launchpad options for a restore drill."""

    force: bool = Field(default=False, description="Drill now even if LOYALTY_DRILL_EVERY_N_BACKUPS says to skip this backup.")
    jobs: Optional[int] = Field(
        default=None,
        description="pg_restore -j for this drill; empty uses LOYALTY_DRILL_JOBS (2). 1 streams the verified archive "
        "into pg_restore without a temporary file.",
    )
    progress_interval_seconds: float = Field(default=10.0, description="How often the run log reports progress (<= 10 s).")


def backups_since_last_drill(instance: dg.DagsterInstance, newest_filename: Optional[str]) -> Optional[int]:
    """How many backups are newer than the one the last drill restored (this one included); None if never drilled."""
    last = instance.get_latest_materialization_event(DRILL_ASSET_KEY)
    if last is None:
        return None
    drilled = metadata_values(last).get("backup_filename")
    count = 0
    for record in recent_backups(instance, limit=100):
        if record.metadata.get("filename") == drilled:
            return count
        count += 1
    return count if count else None


@dg.asset(
    key=DRILL_ASSET_KEY,
    deps=[BACKUP_ASSET_KEY],
    group_name="backups",
    kinds={"postgres"},
    owners=["team:platform"],
    output_required=False,
    tags={"loyalty_ops/criticality": "critical"},
    pool=DATABASE_POOL,
)
def restore_drill(
    context: dg.AssetExecutionContext,
    config: DrillConfig,
    postgres: PostgresTarget,
    backup_storage: BackupStorage,
    offsite: OffsiteStorage,
    restore_settings: RestoreSettings,
) -> Iterator[dg.MaterializeResult]:
    """A restore drill of the newest backup into `loyalty_drill_<timestamp>_<suffix>` (with the source's encoding
    and locale): pg_restore -j, exact row counts per table, catalog counts and materialized views (populated or
    not, rows) against the manifest, measured RTO and restored size; the scratch database is always dropped. Runs every LOYALTY_DRILL_EVERY_N_BACKUPS backups (default every one), on the production server or where
    LOYALTY_DRILL_PLACEMENT says (another server, or a scratch PostgreSQL started for it), after checking that
    the archive and the scratch database fit on their disks."""
    backups = recent_backups(context.instance, limit=1)
    newest = backups[0] if backups else None
    newest_name = newest.metadata.get("filename") if newest else None
    every_n = restore_settings.every_n()
    due, reason = drill_due(every_n, backups_since_last_drill(context.instance, newest_name))
    if not due and not config.force:
        context.log.info(f"restore drill skipped: {reason}")
        return
    context.log.info(f"restore drill: {reason if due else 'forced from the launchpad'}")
    if newest is not None and newest.path:
        ref = BackupRef("file", str(newest.path))
    else:
        ref = BackupRef("latest")
    env = restore_environment(
        context,
        postgres,
        backup_storage,
        offsite,
        work_dir=restore_settings.work_dir,
        tmp_dir=restore_settings.tmp_dir,
        progress_interval_s=min(max(config.progress_interval_seconds, 0.5), 10.0),
    )
    jobs = config.jobs or restore_settings.drill_jobs
    placement = restore_settings.placement(postgres)
    result = run_placed_drill(env, ref, placement, jobs=jobs)
    (context.log.info if result.passed else context.log.error)(result.message)
    metadata = {
        "backup_filename": result.backup_filename,
        "passed": result.passed,
        "rto_s": round(float(result.rto_s), 3),
        "restored_bytes": int(result.restored_bytes),
        "archive_bytes": int(result.archive_bytes),
        "scratch_database": result.scratch_database,
        "scratch_dropped": result.scratch_dropped,
        "failed_step": result.failed_step or "",
        "message": result.message,
        "pg_restore_jobs": jobs,
        "placement": placement.kind,
        "drill_server": result.server,
        "streamed": result.streamed,
        "space_check": dg.MetadataValue.md(result.space.table() if result.space else "not reached"),
        "space": dg.MetadataValue.json(result.space.as_metadata() if result.space else {}),
        "tables_compared": len(result.expected_rows),
        "rows_compared": sum(result.expected_rows.values()),
        "row_counts": dg.MetadataValue.md(row_count_table(result.expected_rows, result.actual_rows)),
        "catalog_counts": dg.MetadataValue.json(result.actual_catalog),
        "materialized_views_compared": len(result.expected_matviews),
        "materialized_views": dg.MetadataValue.json(
            {"at_dump": result.expected_matviews, "restored": result.actual_matviews}
        ),
        "database_locale": result.database_locale,
        "timings": dg.MetadataValue.json({k: round(v, 3) for k, v in result.timings.items()}),
    }
    metadata["mismatches"] = dg.MetadataValue.json(
        [m.message() for m in result.comparison.mismatches] if result.comparison else []
    )
    yield dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset=DRILL_ASSET_KEY,
    name=DRILL_CHECK_NAME,
    blocking=True,
    description="The drill restored the newest backup and every table's row count and the catalog counts equal "
    "the manifest's. A failure names the step or the table, and fails the run so it pages.",
)
def restore_drill_matches_source(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Judges the drill materialized just before it (runs only when the drill ran)."""
    entry = context.instance.get_latest_materialization_event(DRILL_ASSET_KEY)
    if entry is None:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, description="restore_drill has never run"
        )
    meta = metadata_values(entry)
    return dg.AssetCheckResult(
        passed=bool(meta.get("passed")),
        severity=dg.AssetCheckSeverity.ERROR,
        description=meta.get("message") or "",
        metadata={
            "backup_filename": meta.get("backup_filename", ""),
            "failed_step": meta.get("failed_step", ""),
            "rto_s": float(meta.get("rto_s") or 0.0),
            "restored_bytes": int(meta.get("restored_bytes") or 0),
            "mismatches": dg.MetadataValue.json(meta.get("mismatches") or []),
            "drill_run_id": entry.run_id,
        },
    )

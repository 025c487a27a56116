"""``pitr_drill``: every night, after the logical backup, prove that point-in-time recovery works to the exact
point: a marker committed in the live database, a restore point, a row after it, the WAL switched out and seen
in the bucket, then a recovery to that restore point in a scratch instance that must hold the marker and not the
row after it. Records the achieved RPO (marker commit -> its WAL in the bucket) and the RTO; the scratch instance
is always stopped and removed. A failure fails the blocking check and the run, so it pages."""

import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY
from loyalty_ops.defs.pitr.resources import PitrResource
from loyalty_ops.defs.resources import OffsiteStorage, PostgresTarget
from loyalty_ops.lib.concurrency import DATABASE_POOL
from loyalty_ops.lib.pg.session import connect
from loyalty_ops.lib.pitr.drill import new_drill_id, read_marks, wait_in_bucket, write_marks
from loyalty_ops.lib.pitr.instance import free_port
from loyalty_ops.lib.pitr.options import format_instance_settings
from loyalty_ops.lib.pitr.recover import recover
from loyalty_ops.lib.pitr.target import RecoveryTarget, choose_base_backup

DRILL_KEY = dg.AssetKey("pitr_drill")
DRILL_CHECK = "pitr_drill_recovered_to_the_mark"


@dg.asset(
    key=DRILL_KEY, deps=[BACKUP_ASSET_KEY], group_name="pitr", kinds={"postgres", "s3"}, owners=["team:platform"],
    pool=DATABASE_POOL, output_required=False, tags={"loyalty_ops/criticality": "critical"},
    op_tags={"dagster/priority": "-1"},  # after the logical backup's own drill in the nightly run
)
def pitr_drill(context: dg.AssetExecutionContext, pitr: PitrResource, postgres: PostgresTarget, offsite: OffsiteStorage):
    """A point-in-time recovery drill to a restore point written just before, in a scratch instance on a free port:
    marker present, later row absent, achieved RPO (rpo_s) and RTO (rto_s) recorded, scratch instance removed.
    Skipped (and says so) while LOYALTY_PITR_ENABLED is off."""
    if not pitr.enabled:
        context.log.info("PITR drill skipped: point-in-time recovery is off (LOYALTY_PITR_ENABLED)")
        return
    started = time.monotonic()
    drill_id = new_drill_id()
    step = "engine"
    meta: dict = {"drill_id": drill_id, "database": postgres.database_name}
    passed = False
    message = ""
    instance = None
    try:
        engine = pitr.engine(offsite, postgres)
        settings = pitr.recovery_settings()  # settings that cannot work fail here, before the marker is written
        backups = engine.list_backups()
        step = "marker"
        with connect(postgres.spec(), connect_timeout=10) as conn:
            marks = write_marks(conn, drill_id)
        meta.update({"restore_point": marks.restore_point, "restore_point_lsn": marks.restore_point_lsn,
                     "marker_written_at": marks.marker_written_at.isoformat(), "segment": marks.segment})
        step = "archive"
        obj, seen_at = wait_in_bucket(offsite.client(), engine.location, marks.segment, timeout_s=pitr.archive_wait_seconds,
                                      tick=context.log.info)
        meta["rpo_s"] = round(max(seen_at - marks.committed_at, 0.0), 3)
        context.log.info(f"marker's WAL {marks.segment} in the bucket {meta['rpo_s']:.1f} s after its commit")
        step = "base backup"
        target = RecoveryTarget("name", name=marks.restore_point)
        backup = choose_base_backup(backups, target, datetime.now(timezone.utc))
        meta["base_backup_id"] = backup.backup_id
        step = "recovery"
        work = Path(pitr.work_dir) if pitr.work_dir else None
        if work:
            work.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="loyalty_pitr_drill_", dir=work))
        instance = pitr.recovering_instance(base, free_port(), postgres, engine, settings)
        meta.update({"scratch_port": instance.port, "instance_settings": format_instance_settings(settings)})
        result = recover(engine, instance, backup, target, pitr.restore_command_for(engine, instance), postgres.spec(),
                         context.log.info)
        step = "verify"
        with instance.connect(postgres.spec(), postgres.database_name) as conn:
            found = read_marks(conn, drill_id)
        meta.update({"marker_present": "marker" in found, "after_target_absent": "after_target" not in found,
                     **result.metadata()})
        passed = "marker" in found and "after_target" not in found
        message = ("recovered exactly to the restore point: marker present, later row absent" if passed else
                   f"recovered database does not match the restore point: rows found {sorted(found) or 'none'} "
                   "(expected only the marker)")
    except Exception as exc:  # every failure is the drill's verdict: recorded, then the blocking check fails the run
        message = f"PITR drill failed at step {step}: {exc}"
        context.log.error(message)
    finally:
        if instance is not None:
            instance.remove()
            meta["scratch_removed"] = not instance.base_dir.exists()
    # RTO: base backup download + recovery until promoted (what a real restore of this point would take)
    meta["rto_s"] = round(meta.get("download_s", 0.0) + meta.get("recovery_s", 0.0), 3)
    meta.update({"passed": passed, "failed_step": "" if passed else step, "message": message,
                 "duration_s": round(time.monotonic() - started, 3)})
    (context.log.info if passed else context.log.error)(message)
    yield dg.MaterializeResult(metadata=meta)


@dg.asset_check(asset=DRILL_KEY, name=DRILL_CHECK, blocking=True, description=(
    "The scratch instance recovered to the drill's restore point holds the marker and not the row written after it, "
    "and was removed. A failure names the step and fails the run, so it pages."))
def pitr_drill_recovered_to_the_mark(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Judges the PITR drill materialized just before it (runs only when the drill ran)."""
    entry = context.instance.get_latest_materialization_event(DRILL_KEY)
    meta = {}
    if entry is not None and entry.asset_materialization is not None:
        meta = {k: getattr(v, "value", v) for k, v in entry.asset_materialization.metadata.items()}
    passed = bool(meta.get("passed")) and meta.get("scratch_removed", True) is not False
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.ERROR,
        description=str(meta.get("message") or "pitr_drill has never run"),
        metadata={"database": str(meta.get("database") or ""), "failed_step": str(meta.get("failed_step") or ""),
                  "rpo_s": float(meta.get("rpo_s") or 0.0), "rto_s": float(meta.get("rto_s") or 0.0),
                  "drill_run_id": entry.run_id if entry else ""},
    )

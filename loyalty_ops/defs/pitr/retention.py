"""``pitr_retention``: after each base backup, the recovery window applied through the engine, plan first.
BLOCKED (nothing deleted, the run fails and pages) while archiving is failing or when the engine would delete the
newest base backup that passed its PITR drill."""

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.pitr.base_backup import BASE_BACKUP_KEY
from loyalty_ops.defs.pitr.drill import DRILL_KEY
from loyalty_ops.defs.pitr.health import require_enabled
from loyalty_ops.defs.pitr.resources import PitrResource
from loyalty_ops.defs.resources import OffsiteStorage, PostgresTarget
from loyalty_ops.lib.formatting import markdown_table
from loyalty_ops.lib.pg.session import connect
from loyalty_ops.lib.pitr.archive import archive_lag_s, read_server_archiver
from loyalty_ops.lib.pitr.retention import backups_in_dry_run, plan_retention


class PitrRetentionConfig(dg.Config):
    dry_run: bool = Field(default=False, description="Plan only: show what the engine would delete, delete nothing.")


def newest_drilled_backup(instance: dg.DagsterInstance):
    for record in instance.fetch_materializations(DRILL_KEY, limit=50).records:
        meta = record.asset_materialization.metadata if record.asset_materialization else {}
        passed = getattr(meta.get("passed"), "value", None)
        if passed:
            return getattr(meta.get("base_backup_id"), "value", None)
    return None


@dg.asset(deps=[BASE_BACKUP_KEY], group_name="pitr", kinds={"s3"}, owners=["team:platform"])
def pitr_retention(context: dg.AssetExecutionContext, config: PitrRetentionConfig, pitr: PitrResource,
                   postgres: PostgresTarget, offsite: OffsiteStorage) -> dg.MaterializeResult:
    """Base backups (and the WAL only they need) older than LOYALTY_PITR_RECOVERY_WINDOW_DAYS (30) deleted by the
    engine's own policy; the plan lists every base backup with keep/delete and why."""
    require_enabled(pitr)
    engine = pitr.engine(offsite, postgres)
    backups = engine.list_backups()
    with connect(postgres.spec(), connect_timeout=10) as conn:
        server = read_server_archiver(conn)
    problems = []
    if server.failing or server.archive_mode not in ("on", "always"):
        problems.append(f"archive_mode {server.archive_mode}, last failure {server.last_failed_wal or 'none'}")
    if archive_lag_s(server) > pitr.max_lag_seconds:
        problems.append(f"lag {archive_lag_s(server):.0f} s over {pitr.max_lag_seconds:.0f} s")
    dry = engine.retention_dry_run(pitr.recovery_window_days)
    plan = plan_retention(pitr.recovery_window_days, backups, backups_in_dry_run(dry.output),
                          newest_drilled_backup(context.instance), problems)
    table = markdown_table(["backup", "status", "consistent from", "decision", "reason"], plan.rows())
    metadata = {"plan": dg.MetadataValue.md(table), "window_days": plan.window_days, "base_backups": len(backups),
                "to_delete": len(plan.delete), "blocked": bool(plan.blocked),
                "blocked_reasons": dg.MetadataValue.json(list(plan.blocked)), "dry_run": config.dry_run}
    if plan.blocked:
        raise dg.Failure("PITR retention BLOCKED, nothing deleted: " + "; ".join(plan.blocked),
                         metadata={"plan": dg.MetadataValue.md(table)})
    deleted = []
    if plan.delete and not config.dry_run:
        engine.run("backup-delete", "-v", "-r", f"RECOVERY WINDOW OF {plan.window_days} DAYS", engine.location.url,
                   engine.location.server_name)
        remaining = {b.backup_id for b in engine.list_backups()}
        deleted = [b for b in plan.delete if b not in remaining]
        if len(deleted) != len(plan.delete):
            raise dg.Failure(f"the engine did not delete {sorted(set(plan.delete) - set(deleted))}")
    metadata["deleted"] = len(deleted)
    return dg.MaterializeResult(metadata=metadata)

"""`dagster_history_cleanup_job`: keeps Dagster's own run history and compute logs bounded.

Dagster never forgets a run by itself: every run's record, its event log (hundreds of rows) and its
captured stdout/stderr stay until deleted. This job deletes finished runs older than `older_than_days`
and the compute logs of runs older than `compute_log_days`. Runs that materialized one of the assets
whose history other jobs read back (backups, offsite copies, restore drills, maintenance) are kept
`keep_asset_runs_days`: retention decides about a year of backups from that history.
Schedule and sensor ticks are purged by the daemon itself (dagster.yaml `retention`).
"""

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.instance.policy import HistoryPolicy, Verdict
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE
from loyalty_ops.lib.backup.tempfiles import directory_bytes
from loyalty_ops.lib.formatting import human_bytes

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
PAGE = 200
SAMPLE = 20
# Without a local directory to list, compute logs are looked up run by run within this window past the cutoff.
REMOTE_LOG_WINDOW = timedelta(days=14)
# Assets whose materialization history is read back (recent_backups, retention's evidence, the morning
# report's last drill and last maintenance). Frequent report/health materializations are not among them.
LONG_HISTORY_ASSETS = ["database_backup", "offsite_backup_copy", "restore_drill", "weekly_maintenance"]


class HistoryCleanupConfig(dg.Config):
    """Launchpad options. The defaults only report what would be deleted (dry run); the daily schedule
    runs with dry_run false."""

    dry_run: bool = Field(
        default=True,
        description="Only count and list what would be deleted; delete nothing. The daily schedule sets false.",
    )
    older_than_days: int = Field(
        default=90, description="Delete finished runs (record, events, compute logs) created more than this many days ago."
    )
    keep_asset_runs_days: int = Field(
        default=400,
        description="Runs that materialized one of keep_asset_runs_for are kept this many days instead: their "
        "metadata is the backup history retention and reports read. Must be >= older_than_days.",
    )
    keep_asset_runs_for: list[str] = Field(
        default=LONG_HISTORY_ASSETS,
        description="Asset keys (as shown in the catalog, e.g. database_backup) whose materializing runs are "
        "kept keep_asset_runs_days.",
    )
    compute_log_days: int = Field(
        default=30,
        description="Delete the captured stdout/stderr of runs older than this many days (the runs stay).",
    )
    max_runs: int = Field(
        default=2000, description="Most runs deleted in one launch; the rest are deleted on the next one."
    )


def _is_local(manager: object) -> bool:
    """Whether the instance keeps compute logs in a local directory (Dagster's local compute log manager, the
    only one that can name a run's local path). Asked of the object, not its class: that class is not part of
    Dagster's public API."""
    return callable(getattr(manager, "get_captured_local_path", None))


def _run_log_dir(manager, run_id: str) -> Path:
    return Path(manager.get_captured_local_path([run_id, "probe"], "out")).parent


def _materialized_assets(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {r.event_log_entry.dagster_event.asset_key.to_user_string() for r in records if r.event_log_entry.dagster_event}


def _delete_compute_logs(instance: dg.DagsterInstance, run_id: str, dry_run: bool) -> Optional[int]:
    """Deletes one run's compute logs; returns the bytes freed (None when the manager cannot tell)."""
    manager = instance.compute_log_manager
    if _is_local(manager):
        path = _run_log_dir(manager, run_id)
        if not path.is_dir():
            return 0
        size = directory_bytes(path)
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
        return size
    if not dry_run:
        manager.delete_logs(prefix=[run_id])
    return None


@dg.op(pool="dagster_history_cleanup")
def prune_dagster_history(context: dg.OpExecutionContext, config: HistoryCleanupConfig) -> dg.Output[dict]:
    """Delete old finished runs (record, event log, compute logs) and old compute logs, or only report
    them in a dry run. Active runs and this run are never touched."""
    policy = HistoryPolicy(config.older_than_days, config.keep_asset_runs_days, config.compute_log_days)
    problems = policy.problems()
    if config.max_runs < 1:
        problems.append(f"max_runs must be at least 1 (got {config.max_runs})")
    if problems:
        raise dg.Failure("; ".join(problems) + ". Fix the run config and launch again; nothing was deleted.")

    instance = context.instance
    now = datetime.now(timezone.utc)
    verb = "would delete" if config.dry_run else "deleted"

    # 1. Whole runs, oldest first.
    deleted_runs: list[str] = []
    kept_for_assets = 0
    log_bytes = 0
    cursor = None
    long_history = set(config.keep_asset_runs_for)
    filters = dg.RunsFilter(statuses=FINISHED, created_before=policy.run_cutoff(now))
    while len(deleted_runs) < config.max_runs:
        records = instance.get_run_records(filters, limit=PAGE, ascending=True, cursor=cursor)
        if not records:
            break
        for record in records:
            run_id = record.dagster_run.run_id
            cursor = run_id
            if run_id == context.run_id or len(deleted_runs) >= config.max_runs:
                continue
            keeps_history = bool(_materialized_assets(instance, run_id) & long_history)
            verdict = policy.verdict(record.create_timestamp, now, finished=True, materialized_assets=keeps_history)
            if verdict is not Verdict.DELETE_RUN:
                kept_for_assets += 1
                continue
            log_bytes += _delete_compute_logs(instance, run_id, config.dry_run) or 0
            if not config.dry_run:
                instance.delete_run(run_id)
            deleted_runs.append(run_id)
        context.log.info(f"{verb} {len(deleted_runs)} runs so far ({kept_for_assets} kept for their asset history)")

    # 2. Compute logs of runs that stay.
    log_runs = 0
    manager = instance.compute_log_manager
    deleted = set(deleted_runs)
    log_cutoff = policy.log_cutoff(now)
    if _is_local(manager):
        base = _run_log_dir(manager, "x").parent
        candidates = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        for start in range(0, len(candidates), PAGE):
            chunk = [run_id for run_id in candidates[start : start + PAGE] if run_id not in deleted]
            if not chunk:
                continue
            known = {r.dagster_run.run_id: r for r in instance.get_run_records(dg.RunsFilter(run_ids=chunk))}
            for run_id in chunk:
                record = known.get(run_id)
                if record is None:
                    # Only directories that look like a run's (compute_logs inside) and whose run is gone.
                    if not (base / run_id / "compute_logs").is_dir():
                        continue
                elif record.dagster_run.status not in FINISHED or record.create_timestamp >= log_cutoff:
                    continue
                size = _delete_compute_logs(instance, run_id, config.dry_run) or 0
                if size:
                    log_runs += 1
                    log_bytes += size
    else:
        window = dg.RunsFilter(statuses=FINISHED, created_before=log_cutoff, created_after=log_cutoff - REMOTE_LOG_WINDOW)
        for record in instance.get_run_records(window, limit=config.max_runs):
            if record.dagster_run.run_id not in deleted:
                _delete_compute_logs(instance, record.dagster_run.run_id, config.dry_run)
                log_runs += 1

    summary = {
        "dry_run": config.dry_run,
        "runs_deleted": len(deleted_runs),
        "runs_kept_for_asset_history": kept_for_assets,
        "compute_log_runs_cleaned": log_runs,
        "compute_log_bytes": log_bytes,
    }
    context.log.info(
        f"{verb} {len(deleted_runs)} runs older than {config.older_than_days} days "
        f"({kept_for_assets} kept for their asset history) and the compute logs of {log_runs} more runs; "
        f"{human_bytes(log_bytes)} of compute logs"
    )
    return dg.Output(
        summary,
        metadata={
            **summary,
            "older_than_days": config.older_than_days,
            "keep_asset_runs_days": config.keep_asset_runs_days,
            "compute_log_days": config.compute_log_days,
            "sample_run_ids": dg.MetadataValue.json(deleted_runs[:SAMPLE]),
        },
    )


@dg.job(
    tags={"loyalty_ops/severity": "warning"},
    # One op: a separate step process would only add a Python start-up.
    executor_def=dg.in_process_executor,
    description="Keep Dagster's own history bounded: delete finished runs older than 90 days (400 for runs that "
    "materialized backups, drills or maintenance) and compute logs older than 30 days. Launched by hand it is a dry run unless "
    "dry_run is set to false. Scheduled daily at 04:30 Africa/Harare.",
)
def dagster_history_cleanup_job():
    prune_dagster_history()


dagster_history_cleanup_schedule = dg.ScheduleDefinition(
    name="dagster_history_cleanup_schedule",
    job=dagster_history_cleanup_job,
    cron_schedule="30 4 * * *",
    execution_timezone=PLATFORM_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    run_config=dg.RunConfig(ops={"prune_dagster_history": HistoryCleanupConfig(dry_run=False)}),
    description="Daily at 04:30 Africa/Harare (after the 02:00 backup): prune run history and compute logs.",
)

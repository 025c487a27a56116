"""``retention_plan`` (what would be kept and deleted, and why, as markdown) and ``retention_cleanup``
(carries the plan out). Given a plan from an earlier run, the cleanup re-lists everything and deletes
only what both that plan and a fresh plan delete, so an old plan can never remove something the present
state would keep."""

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Optional
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.defs.retention.evidence import gather_evidence
from loyalty_ops.defs.retention.settings import RetentionSettings
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE
from loyalty_ops.lib.backup.inventory import list_local_files, list_multipart_uploads, list_objects
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.retention.cleanup import carry_out
from loyalty_ops.lib.retention.inventory import resolve_log_dir, scan_log_dir
from loyalty_ops.lib.retention.gates import plan_with_reverification
from loyalty_ops.lib.retention.plan import Inventory, PolicyError, RetentionPlan, RetentionPolicy, restrict_to
from loyalty_ops.lib.retention.render import plan_summary
from loyalty_ops.lib.retention.reverify import reverify

OWNERS = ["team:platform"]
GROUP = "retention"
LEFT_ALONE_LIMIT = 200


class RetentionPlanConfig(dg.Config):
    """Launchpad overrides of the retention policy for this run; empty fields use the LOYALTY_RETENTION_* settings."""

    keep_days: Optional[float] = Field(default=None, description="Keep every backup younger than this many days (default 30).")
    min_keep: Optional[int] = Field(default=None, description="The floor: always keep the newest N verified backups (>= 1, default 3).")
    gfs_daily: Optional[int] = Field(default=None, description="GFS: keep the newest verified backup of each of the last N days (0 = off).")
    gfs_weekly: Optional[int] = Field(default=None, description="GFS: ... of each of the last N ISO weeks (0 = off).")
    gfs_monthly: Optional[int] = Field(default=None, description="GFS: ... of each of the last N months (0 = off).")


class RetentionCleanupConfig(dg.Config):
    """Launchpad options for carrying out the plan."""

    dry_run: Optional[bool] = Field(
        default=None,
        description="true: report what would be deleted and delete nothing. Empty uses LOYALTY_RETENTION_DRY_RUN (default false).",
    )


class _Where(NamedTuple):
    """What retention works on: the database, where its backups live (and an S3 client for the bucket), the logs."""

    database: str
    location: BackupLocation
    client: Any  # None when no offsite copy is configured
    log_dir: Optional[Path]

    @property
    def bucket(self) -> Optional[str]:
        return self.location.bucket

    @property
    def backup_dir(self) -> Path:
        return self.location.backup_dir


class _Context(NamedTuple):
    """What listing found, kept for the cleanup step."""

    plan: RetentionPlan
    where: _Where
    stats: dict


def _where(settings: RetentionSettings, backup_storage: BackupStorage, offsite: OffsiteStorage, postgres: PostgresTarget) -> _Where:
    """The database, the backup location and the log directory, checked before anything is listed."""
    database = postgres.database_name
    location = backup_storage.location(offsite)  # refuses invalid offsite settings
    client = offsite.client() if location.offsite_configured else None
    return _Where(database, location, client, resolve_log_dir(settings.log_dir))


def make_plan(
    context: dg.AssetExecutionContext,
    settings: RetentionSettings,
    backup_storage: BackupStorage,
    offsite: OffsiteStorage,
    postgres: PostgresTarget,
    policy: RetentionPolicy,
) -> _Context:
    """List everything, read the history, and plan. Fails (touching nothing) on bad settings or listing errors."""
    try:
        policy.validate()
    except PolicyError as exc:
        raise dg.Failure(f"retention policy is invalid: {exc}") from None
    where = _where(settings, backup_storage, offsite, postgres)
    location, client, bucket, log_dir = where.location, where.client, where.bucket, where.log_dir
    if location.offsite_configured and location.object_lock_days:  # locked copies are kept until their lock ends
        policy = dataclasses.replace(policy, object_lock_days=location.object_lock_days)
    try:
        local = list_local_files(location)
    except FileNotFoundError as exc:
        raise dg.Failure(str(exc)) from None
    remote = None
    multipart: tuple = ()
    list_started = time.monotonic()
    if bucket:
        try:
            remote = list_objects(client, location, log=context.log.info)
            multipart = list_multipart_uploads(client, location)
        except Exception as exc:
            raise dg.Failure(
                f"listing {location.prefix_uri} failed ({exc}); nothing was planned or deleted. Check AWS_ENDPOINT_URL, "
                "the credentials and LOYALTY_S3_BUCKET"
            ) from None
    list_s = time.monotonic() - list_started
    logs = None
    if log_dir is not None:
        try:
            logs = scan_log_dir(log_dir)
        except FileNotFoundError as exc:
            raise dg.Failure(str(exc)) from None
    evidence = gather_evidence(context.instance, settings.history_limit)
    inventory = Inventory(where.database, local, remote, location.prefix, multipart, logs)
    started = time.monotonic()
    checked: dict = {}

    def check(requests):
        # The I/O of re-verification: re-hash the floor's files, HEAD the objects (and GET their sidecars).
        context.log.info(f"re-verifying {len(requests)} copies the plan relies on before anything is deleted")
        return reverify(requests, location=location, client=client, stats=checked)

    plan = plan_with_reverification(
        inventory, evidence, policy, datetime.now(timezone.utc), ZoneInfo(PLATFORM_TIMEZONE), check
    )
    stats = {
        "planning_s": round(time.monotonic() - started - checked.get("seconds", 0.0), 4),
        "reverify_s": float(checked.get("seconds", 0.0)),
        "reverify_bytes_hashed": int(checked.get("bytes_hashed", 0)),
        "reverify_s3_requests": int(checked.get("s3_requests", 0)),
        "listing_s": round(list_s, 3),
        "local_files_listed": len(local),
        "s3_objects_listed": len(remote or ()),
        "multipart_uploads_listed": len(multipart),
        "log_files_listed": len(logs or ()),
    }
    return _Context(plan, where, stats)


@dg.asset(group_name=GROUP, kinds={"python", "s3"}, owners=OWNERS, tags={"loyalty_ops/criticality": "warning"})
def retention_plan(
    context: dg.AssetExecutionContext,
    config: RetentionPlanConfig,
    retention_settings: RetentionSettings,
    backup_storage: BackupStorage,
    offsite: OffsiteStorage,
    postgres: PostgresTarget,
) -> dg.Output[RetentionPlan]:
    """What retention would keep and delete, with the reason for every backup, local file, S3 object,
    stale multipart upload and log file: the newest verified backups (the floor) are always kept, nothing
    younger than keep_days is deleted, a local backup without a confirmed offsite copy (object and
    sidecars) is kept, and if the newest backup is not verified the plan is BLOCKED and nothing is
    deleted. Before deciding, the floor's files are re-hashed and the S3 copies it relies on re-checked:
    a backup damaged since its checks BLOCKS the plan. Read the `plan` metadata before the cleanup runs."""
    policy = retention_settings.policy(
        keep_days=config.keep_days, min_keep=config.min_keep,
        gfs_daily=config.gfs_daily, gfs_weekly=config.gfs_weekly, gfs_monthly=config.gfs_monthly,
    )
    found = make_plan(context, retention_settings, backup_storage, offsite, postgres, policy)
    plan = found.plan
    summary = plan_summary(plan)
    if plan.blocked:
        context.log.error(f"retention is BLOCKED: {plan.blocked}")
    else:
        context.log.info(
            f"retention plan: delete {len(plan.deletions)} items ({human_bytes(plan.bytes_to_free)}), "
            f"{summary['kept_not_offsite']} local backups kept for lack of a confirmed offsite copy"
        )
    return dg.Output(
        plan,
        metadata={
            "plan": dg.MetadataValue.md(plan.markdown()),
            "blocked": bool(plan.blocked),
            "blocked_reason": plan.blocked or "",
            "policy": plan.policy.describe(),
            "database": plan.database,
            "backup_dir": dg.MetadataValue.path(str(found.where.backup_dir)),
            "s3_prefix": f"s3://{found.where.bucket}/{plan.prefix}" if found.where.bucket else "not configured",
            # Names that are not this database's backups (month 13, other databases, temp files): never touched.
            "left_alone": dg.MetadataValue.json(
                {"local": list(plan.ignored_local[:LEFT_ALONE_LIMIT]), "s3": list(plan.ignored_remote[:LEFT_ALONE_LIMIT])}
            ),
            **summary,
            **found.stats,
        },
    )


@dg.asset(group_name=GROUP, kinds={"python", "s3"}, owners=OWNERS, tags={"loyalty_ops/criticality": "warning"})
def retention_cleanup(
    context: dg.AssetExecutionContext,
    config: RetentionCleanupConfig,
    retention_plan: RetentionPlan,
    retention_settings: RetentionSettings,
    backup_storage: BackupStorage,
    offsite: OffsiteStorage,
    postgres: PostgresTarget,
) -> dg.MaterializeResult:
    """Carries out `retention_plan`: S3 objects first (DeleteObjects, 1000 keys a request, per-key errors
    checked), then stale multipart uploads, then local backups and sidecars (each only once its offsite
    status is known), then old logs. Given a plan from an earlier run, it re-lists everything and deletes
    only what that plan and a fresh plan both delete. Fails, deleting nothing, when the plan is blocked;
    fails after the safe part of the work when S3 reports errors. `dry_run` reports without deleting."""
    dry_run = retention_settings.dry_run if config.dry_run is None else config.dry_run
    if retention_plan.blocked:
        raise dg.Failure(
            description=f"retention is blocked, nothing was deleted: {retention_plan.blocked}",
            metadata={"blocked_reason": retention_plan.blocked},
        )
    where = _where(retention_settings, backup_storage, offsite, postgres)
    planned_prefix = retention_plan.prefix if retention_plan.offsite_configured else None
    current_prefix = where.location.prefix if where.bucket else None
    if where.database != retention_plan.database or planned_prefix != current_prefix:
        raise dg.Failure(
            f"the plan was made for database {retention_plan.database!r}, S3 prefix {planned_prefix!r}, but the settings "
            f"now say {where.database!r}, {current_prefix!r} (PGDATABASE / LOYALTY_S3_BUCKET / LOYALTY_S3_PREFIX changed); "
            "re-run retention_plan"
        )
    latest = context.instance.get_latest_materialization_event(dg.AssetKey("retention_plan"))
    same_run = latest is not None and latest.run_id == context.run_id
    if same_run:
        # Planned moments ago in this run, under the same database lock: no second listing of the bucket
        # (that would double the list requests). carry_out still re-checks each local file, and each local
        # backup's offsite copy, right before deleting it.
        found = _Context(retention_plan, where, {})
        plan = retention_plan
    else:
        # A plan from an earlier run: re-list and re-plan, and carry out only what both plans delete.
        found = make_plan(context, retention_settings, backup_storage, offsite, postgres, retention_plan.policy)
        plan = restrict_to(found.plan, retention_plan)
    if plan.blocked:
        raise dg.Failure(
            description=f"retention is blocked, nothing was deleted: {plan.blocked}",
            metadata={"blocked_reason": plan.blocked, "plan": dg.MetadataValue.md(plan.markdown())},
        )
    started = time.monotonic()
    outcome = carry_out(
        plan,
        location=found.where.location,
        client=found.where.client,
        log_dir=found.where.log_dir,
        dry_run=dry_run,
        log=context.log.info,
    )
    skipped_md = "\n".join(f"- {i.location} `{i.name}`: {why}" for i, why in outcome.skipped[:200]) or "None."
    errors_md = "\n".join(f"- {e}" for e in outcome.errors[:200]) or "None."
    metadata = {
        "dry_run": dry_run,
        "replanned": not same_run,
        "deleted_local_backups": outcome.count("local", "backup"),
        "deleted_local_sidecars": outcome.count("local", "sidecar"),
        "deleted_s3_objects": outcome.count("s3", "backup") + outcome.count("s3", "sidecar"),
        "aborted_multipart_uploads": outcome.count("s3", "multipart"),
        "deleted_logs": outcome.count("logs"),
        "bytes_freed": outcome.bytes_freed,
        "skipped": len(outcome.skipped),
        "errors": len(outcome.errors),
        "s3_requests": outcome.s3_requests,
        "duration_s": round(time.monotonic() - started, 3),
        "skipped_items": dg.MetadataValue.md(skipped_md),
        "error_details": dg.MetadataValue.md(errors_md),
        "plan": dg.MetadataValue.md(plan.markdown()),
    }
    verb = "would free" if dry_run else "freed"
    context.log.info(f"retention cleanup {verb} {human_bytes(outcome.bytes_freed)} ({len(outcome.deleted)} items)")
    if outcome.errors:
        raise dg.Failure(
            description=f"retention cleanup hit {len(outcome.errors)} errors; local copies whose offsite status was "
            f"unknown were kept. First: {outcome.errors[0]}",
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)

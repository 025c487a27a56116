"""The weekly maintenance asset (``weekly_maintenance``): plan by need, then VACUUM/REINDEX without
blocking the loyalty API; or, in full mode, what the guide's ``scripts/db-maintenance.sh`` does."""


import time
from typing import Iterator, List, Optional

import dagster as dg
import psycopg
from pydantic import Field

from loyalty_ops.defs.resources import PostgresTarget
from loyalty_ops.lib.concurrency import DATABASE_POOL
from loyalty_ops.lib.formatting import first_line
from loyalty_ops.lib.maintenance import stats as pgstats
from loyalty_ops.lib.maintenance.execute import (
    ExecutionSettings,
    MaintenanceError,
    MaintenanceExecutor,
    MaintenanceReport,
    connect,
)
from loyalty_ops.lib.maintenance.manual import UnknownTargetError, manual_plan
from loyalty_ops.lib.maintenance.plan import MaintenancePlan, Thresholds, plan_markdown, plan_maintenance

OWNERS = ["team:platform"]
MAINTENANCE_ASSET_KEY = "weekly_maintenance"
# One maintenance statement stream per database at a time; the run queue's database_lock tag keeps it
# apart from backups and restores.
MAINTENANCE_POOL = DATABASE_POOL  # shared with dumps and restores: never two at once on the database
MODES = ("smart", "full")
WORK_DONE_CHECK = "planned_work_done"
GENTLE = ExecutionSettings()  # the defaults of the session settings that share the server with the API


class MaintenanceConfig(dg.Config):
    """Launchpad options for weekly maintenance. The defaults are what the Sunday schedule runs."""

    mode: str = Field(
        default="smart",
        description="'smart': VACUUM (ANALYZE, SKIP_LOCKED) the tables and REINDEX INDEX CONCURRENTLY the indexes "
        "the thresholds pick, one at a time. 'full': the guide's database-wide VACUUM ANALYZE plus REINDEX "
        "DATABASE (or a concurrent rebuild of every index, see full_reindex).",
    )
    dry_run: bool = Field(default=False, description="Only plan: show what would be done, change nothing.")
    tables: List[str] = Field(
        default_factory=list,
        description="Manual launch: VACUUM exactly these tables (schema.name, e.g. public.events; quote odd names "
        'like "My Schema"."Mixed Case"). With tables or indexes set the thresholds are not used.',
    )
    indexes: List[str] = Field(
        default_factory=list,
        description="Manual launch: REINDEX INDEX CONCURRENTLY exactly these indexes (schema.name).",
    )
    full_reindex: str = Field(
        default="database",
        description="Full mode only: 'database' runs REINDEX DATABASE (as the guide; blocks writes to each table "
        "while its indexes rebuild) or 'concurrently' rebuilds every index with REINDEX INDEX CONCURRENTLY.",
    )
    lock_timeout_s: float = Field(
        default=2.0,
        description="Longest any statement waits for a lock (lock_timeout); a writer queued behind us never waits "
        "longer. Objects that cannot be locked are retried after the rest, then skipped.",
    )
    statement_timeout_s: float = Field(default=1800.0, description="Longest one VACUUM or REINDEX may run (smart mode).")
    full_statement_timeout_s: float = Field(
        default=14400.0, description="Longest a database-wide statement may run in full mode."
    )
    max_attempts: int = Field(default=3, description="Tries per object when its lock is not available.")
    retry_delay_s: float = Field(default=5.0, description="Pause before each retry round.")
    vacuum_truncate: bool = Field(
        default=True,
        description="Let VACUUM return empty pages at the end of a table to the OS (it takes ACCESS EXCLUSIVE "
        "briefly and gives it up as soon as anyone waits). false: never take that lock.",
    )
    dead_ratio: float = Field(default=0.10, description="Pick a table when dead / (live + dead) tuples reach this.")
    min_dead_tuples: int = Field(
        default=1000, description="The ratio rules ignore tables with fewer dead/changed rows than this."
    )
    dead_tuples: int = Field(default=100_000, description="Pick a table with at least this many dead tuples.")
    modified_ratio: float = Field(
        default=0.20, description="Pick a table when rows changed since its last ANALYZE reach this share of live rows."
    )
    max_days_since_maintenance: float = Field(
        default=7.0, description="Pick a table that changed but was not vacuumed or analyzed for this many days."
    )
    index_bloat_ratio: float = Field(
        default=0.30, description="Rebuild an index when its estimated bloat reaches this share of its size."
    )
    min_index_bloat_bytes: int = Field(
        default=1024 * 1024, description="... and at least this many bytes (small indexes are not worth a rebuild)."
    )
    progress_interval_seconds: float = Field(
        default=10.0, description="How often the run log reports on a long VACUUM/REINDEX."
    )
    parallel_workers: Optional[int] = Field(
        default=GENTLE.parallel_workers,
        description="max_parallel_maintenance_workers for the run's session. 0 (the default) keeps each VACUUM and "
        "REINDEX on one core, leaving the other cores to the API; null: the server's setting (PostgreSQL's "
        "default 2 adds up to 2 workers to index builds and VACUUM's index passes: a shorter run, a slower API).",
    )
    vacuum_cost_delay_ms: float = Field(
        default=GENTLE.vacuum_cost_delay_ms,
        description="vacuum_cost_delay for the run's session: VACUUM and ANALYZE sleep this long each time they "
        "have spent vacuum_cost_limit (autovacuum's own throttle). 0: unthrottled, as a manual VACUUM.",
    )
    vacuum_cost_limit: int = Field(default=GENTLE.vacuum_cost_limit, description="vacuum_cost_limit for the session.")
    maintenance_work_mem_mb: int = Field(
        default=GENTLE.maintenance_work_mem_mb,
        description="maintenance_work_mem for the session in MB (index builds sort in it); 0: the server's setting.",
    )
    pause_between_objects_s: float = Field(
        default=GENTLE.pause_between_objects_s,
        description="Pause between one table or index and the next (smart, manual and concurrent full mode).",
    )

    def thresholds(self) -> Thresholds:
        return Thresholds(
            dead_ratio=self.dead_ratio,
            min_dead_tuples=self.min_dead_tuples,
            dead_tuples=self.dead_tuples,
            modified_ratio=self.modified_ratio,
            max_days_since_maintenance=self.max_days_since_maintenance,
            index_bloat_ratio=self.index_bloat_ratio,
            min_index_bloat_bytes=self.min_index_bloat_bytes,
        )

    def settings(self) -> ExecutionSettings:
        return ExecutionSettings(
            lock_timeout_s=self.lock_timeout_s,
            statement_timeout_s=self.statement_timeout_s,
            max_attempts=self.max_attempts,
            retry_delay_s=self.retry_delay_s,
            vacuum_truncate=self.vacuum_truncate,
            progress_interval_s=self.progress_interval_seconds,
            full_reindex=self.full_reindex,
            full_statement_timeout_s=self.full_statement_timeout_s,
            parallel_workers=self.parallel_workers,
            vacuum_cost_delay_ms=self.vacuum_cost_delay_ms,
            vacuum_cost_limit=self.vacuum_cost_limit,
            maintenance_work_mem_mb=self.maintenance_work_mem_mb,
            pause_between_objects_s=self.pause_between_objects_s,
        )


def _check_config(config: MaintenanceConfig) -> tuple[Thresholds, ExecutionSettings]:
    if config.mode not in MODES:
        raise dg.Failure(f"mode must be 'smart' or 'full', got {config.mode!r}: fix the run config 'mode'")
    if config.mode == "full" and (config.tables or config.indexes):
        raise dg.Failure(
            "mode 'full' does the whole database: leave 'tables' and 'indexes' empty, or use mode 'smart' "
            "with the list"
        )
    try:
        thresholds, settings = config.thresholds(), config.settings()
        thresholds.validate()
        settings.validate()
    except ValueError as exc:
        raise dg.Failure(f"{exc}: fix the run config") from None
    return thresholds, settings


def _report_metadata(report: MaintenanceReport, plan: MaintenancePlan | None) -> dict:
    skipped = [f"{i.qualified}: {i.reason}" for i in report.skipped]
    failed = [f"{i.qualified}: {i.reason}" for i in report.failed]
    metadata = {
        "mode": report.mode,
        "database": report.database,
        "tables_vacuumed": report.tables_vacuumed,
        "indexes_reindexed": report.indexes_reindexed,
        "leftover_indexes_dropped": report.leftovers_dropped,
        "skipped": len(report.skipped),
        "failed": len(report.failed),
        "reclaimed_bytes": report.reclaimed_bytes,
        "duration_s": round(report.duration_s, 3),
        "longest_lock_wait_s": round(report.longest_wait_s, 3),
        "skipped_objects": dg.MetadataValue.json(skipped),
        "failed_objects": dg.MetadataValue.json(failed),
        "results": dg.MetadataValue.md(report.markdown()),
        "objects": dg.MetadataValue.json([i.as_dict() for i in report.items]),
    }
    if plan is not None:
        metadata["plan"] = dg.MetadataValue.md(plan_markdown(plan))
        metadata["planned_objects"] = len(plan.items)
    return metadata


def _dry_run_check() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=WORK_DONE_CHECK, passed=True, description="dry run: only planned, nothing was meant to be done"
    )


def _work_done_check(report: MaintenanceReport) -> dg.AssetCheckResult:
    """Fails (blocking, so the run fails and pages) when a kind of work was planned and none of it was
    done: "0 of 10 indexes rebuilt", naming the session that blocked it."""
    shortfalls = report.shortfalls()
    planned = {
        action: sum(1 for i in report.items if i.action == action and (i.status != "skipped" or i.gave_up_waiting))
        for action in ("vacuum", "reindex")
    }
    return dg.AssetCheckResult(
        check_name=WORK_DONE_CHECK,
        passed=not shortfalls,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(shortfalls) if shortfalls else (
            f"{report.tables_vacuumed} of {planned['vacuum']} tables vacuumed, "
            f"{report.indexes_reindexed} of {planned['reindex']} indexes rebuilt"
        ),
        metadata={
            "tables_planned": planned["vacuum"],
            "tables_vacuumed": report.tables_vacuumed,
            "indexes_planned": planned["reindex"],
            "indexes_reindexed": report.indexes_reindexed,
            "blocked_by": dg.MetadataValue.json(
                sorted({b["pid"]: b for i in report.items for b in i.blocked_by}.values(), key=lambda b: b["pid"])
            ),
        },
    )


@dg.asset(
    key=MAINTENANCE_ASSET_KEY,
    group_name="maintenance",
    kinds={"postgres"},
    owners=OWNERS,
    pool=MAINTENANCE_POOL,
    output_required=False,
    check_specs=[
        dg.AssetCheckSpec(
            WORK_DONE_CHECK,
            asset=MAINTENANCE_ASSET_KEY,
            blocking=True,
            description="Fails the run when maintenance had work planned (tables to vacuum or indexes to rebuild) "
            "and did none of it, naming the session that blocked it (pid, state, transaction age, query).",
        )
    ],
)
def weekly_maintenance(
    context: dg.AssetExecutionContext, config: MaintenanceConfig, postgres: PostgresTarget
) -> Iterator[dg.MaterializeResult]:
    """Weekly VACUUM/ANALYZE and REINDEX chosen by need. The plan reads pg_stat_user_tables, index
    statistics and the catalog and picks tables by dead-tuple ratio, dead tuples, changes since ANALYZE and
    days since the last vacuum/analyze, and indexes by estimated bloat or invalidity (the plan table says
    which rule chose what). Then, one object at a time under lock_timeout/statement_timeout:
    `VACUUM (ANALYZE, SKIP_LOCKED)` and `REINDEX INDEX CONCURRENTLY`; locked objects are retried and then
    skipped, leftovers of failed rebuilds are dropped. `dry_run` only plans (logged as an observation);
    `mode: full` runs the guide's database-wide VACUUM ANALYZE and REINDEX DATABASE. Every skip names who
    blocked it (pid, state, transaction age, query); when nothing planned was done the run fails."""
    started = time.monotonic()
    thresholds, settings = _check_config(config)
    spec = postgres.spec()
    try:
        conn = connect(spec)
    except MaintenanceError as exc:
        raise dg.Failure(str(exc)) from None
    with conn:
        plan = None
        if config.mode == "smart":
            tables = pgstats.read_table_stats(conn)
            indexes = pgstats.read_index_stats(conn)
            if config.tables or config.indexes:
                try:
                    plan = manual_plan(tables, indexes, config.tables, config.indexes)
                except UnknownTargetError as exc:
                    raise dg.Failure(description=str(exc), metadata={"target": spec.redacted()}) from None
            else:
                plan = plan_maintenance(tables, indexes, thresholds, pgstats.server_now(conn))
            context.log.info(
                f"plan for {spec.redacted()}: {len(plan.tables)} tables to vacuum, {len(plan.reindexes)} indexes "
                f"to rebuild, {len(plan.drops)} leftovers to drop "
                + "; ".join(f"{i.action} {i.qualified} ({', '.join(i.rules)})" for i in plan.items)
            )
            if config.dry_run:
                context.log_event(
                    dg.AssetObservation(
                        asset_key=MAINTENANCE_ASSET_KEY,
                        metadata={
                            "dry_run": True,
                            "mode": plan.mode,
                            "planned_objects": len(plan.items),
                            "tables_to_vacuum": len(plan.tables),
                            "indexes_to_reindex": len(plan.reindexes),
                            "leftovers_to_drop": len(plan.drops),
                            "plan": dg.MetadataValue.md(plan_markdown(plan)),
                        },
                    )
                )
                yield _dry_run_check()
                return
        elif config.dry_run:
            context.log_event(
                dg.AssetObservation(
                    asset_key=MAINTENANCE_ASSET_KEY,
                    metadata={
                        "dry_run": True,
                        "mode": "full",
                        "plan": dg.MetadataValue.md(
                            "**full plan**: `VACUUM (ANALYZE, SKIP_LOCKED)` of the whole database, then "
                            + ("`REINDEX DATABASE`" if config.full_reindex == "database"
                               else "`REINDEX INDEX CONCURRENTLY` of every index")
                            + f", under lock_timeout {config.lock_timeout_s:g} s."
                        ),
                    },
                )
            )
            yield _dry_run_check()
            return
        planned_s = time.monotonic() - started
        executor = MaintenanceExecutor(conn, settings, context.log, spec=spec)
        try:
            report = executor.execute_full() if config.mode == "full" else executor.execute_plan(plan)
        except MaintenanceError as exc:
            raise dg.Failure(str(exc)) from None
        except psycopg.OperationalError as exc:
            raise dg.Failure(
                f"lost the connection to {spec.redacted()} during maintenance ({first_line(exc)}); "
                "objects already done stay done - check the server and relaunch, the plan will pick what is left"
            ) from None
    context.log.info(
        f"maintenance done in {report.duration_s:.1f} s: {report.tables_vacuumed} tables vacuumed, "
        f"{report.indexes_reindexed} indexes rebuilt, {len(report.skipped)} skipped, {len(report.failed)} failed, "
        f"{report.reclaimed_bytes:,} bytes reclaimed"
    )
    metadata = _report_metadata(report, plan)
    metadata["duration_s"] = round(time.monotonic() - started, 3)
    metadata["plan_duration_s"] = round(planned_s, 3)
    metadata["session_settings"] = dg.MetadataValue.json(settings.session_settings())
    check = _work_done_check(report)
    if not check.passed:
        context.log.error(f"maintenance did none of its planned work: {check.description}")
    yield dg.MaterializeResult(metadata=metadata, check_results=[check])


"""The restore drill: restore a backup into a scratch database, compare it with the manifest, always drop it.

Scratch databases are named ``loyalty_drill_<YYYYMMDD_HHMMSS>_<8 hex>``, so two drills started in the same
second never share one. A live drill holds a session advisory lock on its scratch database's name (in the
maintenance database) for its whole life; the leftover cleanup at the start of a drill drops only scratch
databases that are older than ``LEFTOVER_DRILL_AGE``, have no sessions, and whose lock nobody holds, that is
the leftovers of drills that were killed, never a concurrent live one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

import psycopg

from loyalty_ops.lib.pg.tools import ToolError
from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.restore import database as db
from loyalty_ops.lib.restore.counts import compare_counts, restored_counts
from loyalty_ops.lib.restore.environment import RestoreEnvironment
from loyalty_ops.lib.restore.errors import RestoreStepError
from loyalty_ops.lib.restore.fetch import FetchedArchive, FetchPlan, fetch_and_verify
from loyalty_ops.lib.restore.plan import DRILL_PREFIX, BackupRef, drill_database_name, drill_database_time
from loyalty_ops.lib.restore.pg_restore import run_pg_restore
from loyalty_ops.lib.restore.archive_passes import ArchiveChanged
from loyalty_ops.lib.restore.source import list_candidates, where_backups_live
from loyalty_ops.lib.restore.space import SpaceReport, check_restore_space
from loyalty_ops.lib.restore.verify import Comparison

LEFTOVER_DRILL_AGE = timedelta(minutes=10)


@dataclass
class DrillResult:
    passed: bool
    backup_filename: str
    scratch_database: str
    failed_step: Optional[str] = None
    message: str = ""
    rto_s: float = 0.0
    restored_bytes: int = 0
    archive_bytes: int = 0
    comparison: Optional[Comparison] = None
    expected_rows: dict[str, int] = field(default_factory=dict)
    actual_rows: dict[str, int] = field(default_factory=dict)
    actual_catalog: dict[str, int] = field(default_factory=dict)
    expected_catalog: dict[str, int] = field(default_factory=dict)
    expected_matviews: dict[str, dict] = field(default_factory=dict)
    actual_matviews: dict[str, dict] = field(default_factory=dict)
    database_locale: str = ""
    notes: list[str] = field(default_factory=list)
    scratch_dropped: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    streamed: bool = False  # jobs 1: streamed into pg_restore, no temporary copy of the archive
    space: Optional[SpaceReport] = None  # the disk-space check made before anything was written
    server: str = ""  # where the scratch database lived (the server, without a password)


def drop_leftover_drills(env: RestoreEnvironment, now: datetime) -> list[str]:
    """Scratch databases of drills that were killed before they could clean up: older than
    ``LEFTOVER_DRILL_AGE``, no sessions, and no live drill holding their lock. Anything else is left alone
    (also names that are not a drill's, or carry an impossible timestamp)."""
    dropped = []
    with db.admin_connection(env.spec) as conn:
        for name, sessions in db.list_databases(conn, DRILL_PREFIX):
            created_at = drill_database_time(name)
            if created_at is None or sessions or now - created_at < LEFTOVER_DRILL_AGE:
                continue
            if not db.try_lock_drill(conn, name):
                env.log(f"{name} belongs to a drill that is still running; left alone")
                continue
            try:
                db.drop_database(conn, name)
                dropped.append(name)
            finally:
                db.unlock_drill(conn, name)
    for name in dropped:
        env.warn(f"dropped {name}, the scratch database of an earlier drill that did not finish")
    return dropped


def newest_backup_ref(env: RestoreEnvironment) -> BackupRef:
    """A drill proves the newest backup restores: it never passes over a bad one to drill an older one."""
    candidates = list_candidates(env.location, env.spec.dbname, env.s3)
    if not candidates:
        raise RestoreStepError(
            "find backup", f"there is no backup of {env.spec.dbname} in {where_backups_live(env.location, env.s3)}"
        )
    newest = candidates[0]
    if newest.local_path is not None:
        return BackupRef("file", str(newest.local_path))
    return BackupRef("s3_key", str(newest.s3_key))


def _claim_scratch(env: RestoreEnvironment, scratch: str) -> psycopg.Connection:
    """A maintenance connection holding the scratch database's lock for the drill's life."""
    conn = db.admin_connection(env.spec)
    if not db.try_lock_drill(conn, scratch):
        conn.close()
        raise RestoreStepError("create database", f"scratch database name {scratch} is locked by another drill")
    return conn


def run_drill(
    env: RestoreEnvironment, ref: BackupRef, *, jobs: int = 2, now: Optional[datetime] = None, foreign_server: bool = False
) -> DrillResult:
    """Restore ``ref`` into a scratch database, compare with the manifest, always drop the scratch database.

    ``foreign_server``: ``env.spec`` is not the server the backup came from (a staging or scratch server),
    whose roles may not exist there: restore without owners and privileges.
    Never raises for a failed drill: the result says which step failed and why.
    """
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    scratch = drill_database_name(now)
    result = DrillResult(passed=False, backup_filename=ref.filename or "", scratch_database=scratch, server=env.spec.redacted())
    step = "prepare"
    fetched: Optional[FetchedArchive] = None
    created = False
    lock: Optional[psycopg.Connection] = None
    try:
        lock = _claim_scratch(env, scratch)
        drop_leftover_drills(env, now)
        step = "find backup"
        stream = jobs == 1
        space: list[SpaceReport] = []
        plan = FetchPlan(
            stream=stream,
            before_fetch=lambda located: space.append(check_restore_space(env, located, stream=stream)),
        )
        try:
            fetched = fetch_and_verify(newest_backup_ref(env) if ref.kind == "latest" else ref, env, plan)
        finally:
            result.space = space[0] if space else None
        result.streamed = fetched.archive.streamed
        result.timings.update(fetched.timings)
        result.backup_filename = fetched.located.filename
        result.archive_bytes = fetched.archive.raw_bytes
        result.notes = list(fetched.notes)
        manifest = fetched.located.manifest
        if manifest is None:
            raise RestoreStepError("read manifest", f"{fetched.located.filename} has no manifest: nothing to compare with")
        result.expected_rows = dict(manifest.row_counts)
        result.expected_catalog = dict(manifest.catalog_counts)
        result.expected_matviews = dict(manifest.materialized_views)
        step = "create database"
        result.database_locale = db.describe_locale(manifest.database_locale)
        with db.admin_connection(env.spec) as conn:
            if db.database_exists(conn, scratch):
                raise RestoreStepError(step, f"scratch database {scratch} already exists")
            db.create_database(conn, scratch, locale=manifest.database_locale)
        created = True
        step = "pg_restore"
        env.log(
            f"drill: restoring {fetched.located.filename} into {scratch} on {result.server} ({result.database_locale}) "
            f"with pg_restore -j {jobs}" + (" reading the archive from its standard input" if result.streamed else "")
        )
        try:
            restored = run_pg_restore(
                env.runner,
                env.spec,
                fetched.archive.path,
                scratch,
                jobs=jobs,
                no_owner=foreign_server,
                no_privileges=foreign_server,
                expected_bytes=fetched.archive.raw_bytes,
                log=env.log,
                progress_interval_s=env.progress_interval_s,
                feed=fetched.feed(),
            )
        except ArchiveChanged as exc:
            raise RestoreStepError(step, exc.detail) from None
        result.timings["pg_restore_s"] = restored.duration_s
        result.rto_s = time.monotonic() - started
        step = "measure"
        with db.admin_connection(env.spec) as conn:
            result.restored_bytes = db.database_size(conn, scratch)
        step = "compare with manifest"
        t = time.monotonic()
        counts = restored_counts(env.spec, scratch)
        result.actual_rows, result.actual_catalog, result.actual_matviews = counts.rows, counts.catalog, counts.materialized_views
        result.comparison = compare_counts(manifest, counts)
        result.timings["compare_s"] = time.monotonic() - t
        if not result.comparison.passed:
            raise RestoreStepError(step, result.comparison.summary())
        result.passed = True
        result.message = (
            f"{result.backup_filename} restored into {scratch} in {result.rto_s:.1f} s "
            f"({human_bytes(result.restored_bytes)}); {result.comparison.summary()}"
        )
        if result.notes:
            result.message += ". " + ". ".join(result.notes)
    except RestoreStepError as exc:
        result.failed_step = exc.step
        result.message = f"drill failed at step '{exc.step}': {exc.detail}"
    except ToolError as exc:
        result.failed_step = step
        result.message = f"drill failed at step '{step}': {exc}"
    except Exception as exc:  # a drill reports every failure as a failed drill, with its step
        result.failed_step = step
        result.message = f"drill failed at step '{step}': {type(exc).__name__}: {exc}"
    finally:
        if fetched is not None:
            fetched.cleanup()
        result.scratch_dropped = _drop_scratch(env, scratch, created, result)
        if lock is not None:
            lock.close()  # releases the advisory lock
        result.timings["total_s"] = time.monotonic() - started
    return result


def _drop_scratch(env: RestoreEnvironment, scratch: str, created: bool, result: DrillResult) -> bool:
    t = time.monotonic()
    try:
        with db.admin_connection(env.spec) as conn:
            db.drop_database(conn, scratch)
            gone = not db.database_exists(conn, scratch)
    except Exception as exc:
        env.warn(f"could not drop the drill's scratch database {scratch}: {exc}; drop it by hand")
        if result.passed:
            result.passed = False
            result.failed_step = "drop scratch database"
            result.message = f"drill failed at step 'drop scratch database': {exc}"
        return False
    result.timings["drop_s"] = time.monotonic() - t
    if created:
        env.log(f"dropped the drill's scratch database {scratch}")
    return gone

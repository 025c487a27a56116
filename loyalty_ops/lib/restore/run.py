"""The restore itself and the restore drill, step by step, with nothing touched until the file is proven.

Order of a restore (:func:`restore_backup`):
1. check the target (read-only): refused if it exists in ``new_database`` mode, or is missing in ``replace``;
2. find the backup, download it if it is only on S3;
3. hash and decompress it into a private temporary file; refused on a checksum mismatch or corrupt stream;
4. ``replace`` only: take a safety backup of the target with the existing backup code;
5. create the database (``replace``: a side database next to the target), ``pg_restore -j N --exit-on-error``;
6. compare row and catalog counts with the backup's manifest;
7. ``replace`` only: block new connections to the target, terminate the others, swap the side database in
   by renaming, drop the old one. A failure before this step leaves the target exactly as it was.
Temporary files are removed whatever happens; a database this run created is dropped if the run fails.

A drill (:func:`run_drill`) restores into ``loyalty_drill_<timestamp>``, compares, records the RTO and
restored size, and always drops the scratch database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional

from loyalty_ops.lib.backup.dump import BackupError, BackupRequest, connect, take_backup
from loyalty_ops.lib.backup.manifest import BackupManifest, manifest_for, write_manifest
from loyalty_ops.lib.pg import catalog
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.tools import PgToolRunner, ToolError
from loyalty_ops.lib.progress import ProgressSnapshot, human_bytes
from loyalty_ops.lib.restore import database as db
from loyalty_ops.lib.restore.errors import RestoreRefused, RestoreStepError
from loyalty_ops.lib.restore.plan import (
    DRILL_PREFIX,
    BackupRef,
    RestoreRequest,
    drill_database_name,
    drill_database_time,
    retired_database_name,
    side_database_name,
)
from loyalty_ops.lib.restore.pg_restore import run_pg_restore
from loyalty_ops.lib.restore.source import (
    LocatedBackup,
    PreparedArchive,
    S3Location,
    fetch_backup,
    locate_backup,
    prepare_archive,
)
from loyalty_ops.lib.restore.verify import Comparison, compare_with_manifest

LEFTOVER_DRILL_AGE = timedelta(minutes=10)


def _quiet(_msg: str) -> None:
    pass


@dataclass
class RestoreEnvironment:
    """Everything a restore needs from outside: the server, the tools, where files live, how to report."""

    spec: ConnectionSpec  # the server; ``dbname`` is the source database (whose backups 'latest' means)
    runner: PgToolRunner
    backup_dir: Path
    work_dir: Optional[Path] = None  # for the decompressed archive and downloads; default backup_dir
    s3: Optional[S3Location] = None
    log: Callable[[str], None] = _quiet
    warn: Callable[[str], None] = _quiet
    on_progress: Optional[Callable[[ProgressSnapshot], None]] = None
    progress_interval_s: float = 10.0
    compression: str = "gzip"  # for the safety backup

    @property
    def scratch_dir(self) -> Path:
        return Path(self.work_dir or self.backup_dir)


@dataclass
class FetchedArchive:
    located: LocatedBackup
    archive: PreparedArchive
    downloaded: Optional[Path]
    timings: dict[str, float]

    def cleanup(self) -> None:
        self.archive.path.unlink(missing_ok=True)
        if self.downloaded is not None:
            self.downloaded.unlink(missing_ok=True)


def fetch_and_verify(ref: BackupRef, env: RestoreEnvironment) -> FetchedArchive:
    """Steps 2-3: find, download if needed, hash and decompress. Raises :class:`RestoreRefused`."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    located = locate_backup(ref, env.backup_dir, database=env.spec.dbname, s3=env.s3)
    env.log(
        f"backup: {located.where} ({human_bytes(located.size or 0)}), expected SHA-256 {located.expected_sha256} "
        f"from {', '.join(located.checksum_sources)}"
    )
    timings["find_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    path, downloaded = fetch_backup(
        located, env.scratch_dir, env.s3, on_progress=env.on_progress, progress_interval_s=env.progress_interval_s
    )
    if downloaded:
        timings["download_s"] = time.monotonic() - t1
        env.log(f"downloaded {located.where} in {timings['download_s']:.1f} s")
    try:
        t2 = time.monotonic()
        archive = prepare_archive(
            path,
            located.expected_sha256,
            env.scratch_dir,
            filename=located.filename,
            on_progress=env.on_progress,
            progress_interval_s=env.progress_interval_s,
        )
        timings["verify_decompress_s"] = time.monotonic() - t2
    except BaseException:
        if downloaded:
            path.unlink(missing_ok=True)
        raise
    env.log(
        f"checksum verified ({archive.sha256}); {human_bytes(archive.raw_bytes)} archive decompressed to a private "
        f"temporary file in {timings['verify_decompress_s']:.1f} s"
    )
    return FetchedArchive(located, archive, path if downloaded else None, timings)


def actual_counts(spec: ConnectionSpec, database: str) -> tuple[dict[str, int], dict[str, int]]:
    with connect(spec.with_database(database)) as conn:
        tables = catalog.list_user_tables(conn)
        rows = catalog.count_rows(conn, tables)
        counts = catalog.catalog_counts(conn)
        conn.rollback()
    return rows, counts


def compare_restored(spec: ConnectionSpec, database: str, manifest: BackupManifest) -> Comparison:
    rows, counts = actual_counts(spec, database)
    return compare_with_manifest(manifest.row_counts, manifest.catalog_counts, rows, counts)


SAFETY_SUBDIR = "safety"


def take_safety_backup(env: RestoreEnvironment, database: str) -> Path:
    """A fresh backup of ``database`` (with sidecar and manifest) before it is replaced.

    It goes to ``<backup dir>/safety/``: beside the nightly backups it would pass for the newest one
    (``latest`` would pick it, and retention would see a backup with no verification history). Restore it
    by file name ``safety/<file>``.
    """
    spec = env.spec.with_database(database)
    result = take_backup(
        spec,
        env.runner,
        BackupRequest(backup_dir=env.backup_dir / SAFETY_SUBDIR, compression=env.compression, progress_interval_s=env.progress_interval_s),
        on_progress=env.on_progress,
        log=env.log,
    )
    write_manifest(result.path, manifest_for(result))
    return result.path


@dataclass
class RestoreOutcome:
    request: RestoreRequest
    backup_filename: str
    backup_location: str
    sha256: str
    downloaded: bool
    archive_bytes: int
    restored_bytes: int
    rto_s: float
    comparison: Optional[Comparison]
    safety_backup: Optional[Path] = None
    terminated_connections: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _admin(env: RestoreEnvironment, step: str):
    try:
        return db.admin_connection(env.spec)
    except ConnectionError as exc:
        raise RestoreRefused(step, str(exc)) from None


def restore_backup(
    request: RestoreRequest, env: RestoreEnvironment, *, now: Optional[datetime] = None
) -> RestoreOutcome:
    """Run a validated request. Raises :class:`RestoreRefused` (nothing changed) or :class:`RestoreStepError`."""
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    target = request.target_database
    timings: dict[str, float] = {}

    # 1. The target, read-only.
    with _admin(env, "check target") as conn:
        info = db.database_info(conn, target)
        if not db.can_create_databases(conn):
            raise RestoreRefused("check target", f"role {env.spec.user or '(default)'} may not create databases (needs CREATEDB)")
    if request.replace and info is None:
        raise RestoreRefused(
            "check target", f"database {target!r} does not exist, so there is nothing to replace; use mode new_database"
        )
    if not request.replace and info is not None:
        raise RestoreRefused(
            "check target",
            f"database {target!r} already exists and mode is new_database; pick a new name, or use mode replace "
            f"with confirm={target!r} to overwrite it",
        )

    # 2-3. Find, download, verify, decompress.
    fetched = fetch_and_verify(request.backup, env)
    timings.update(fetched.timings)
    created: Optional[str] = None
    try:
        manifest = fetched.located.manifest
        if manifest is None:
            env.warn(f"{fetched.located.filename} has no manifest: row counts cannot be compared after the restore")

        # 4. Safety backup before anything changes.
        safety: Optional[Path] = None
        if request.replace:
            t = time.monotonic()
            env.log(f"taking a safety backup of {target} before replacing it")
            try:
                safety = take_safety_backup(env, target)
            except (BackupError, ToolError, OSError, ValueError) as exc:
                raise RestoreRefused("safety backup", f"the safety backup of {target} failed: {exc}") from None
            timings["safety_backup_s"] = time.monotonic() - t
            env.log(f"safety backup written: {safety}")

        # 5. Create and restore (replace: into a side database; the target is untouched so far).
        restore_into = side_database_name(target, now) if request.replace else target
        with _admin(env, "create database") as conn:
            try:
                db.create_database(conn, restore_into, like=info if request.replace else None)
            except Exception as exc:
                raise RestoreStepError("create database", f"CREATE DATABASE {restore_into} failed: {exc}") from None
        created = restore_into
        env.log(f"created database {restore_into}; running pg_restore -j {request.jobs} --exit-on-error")
        t = time.monotonic()
        try:
            result = run_pg_restore(
                env.runner,
                env.spec,
                fetched.archive.path,
                restore_into,
                jobs=request.jobs,
                no_owner=request.no_owner,
                expected_bytes=fetched.archive.raw_bytes,
                log=env.log,
                progress_interval_s=env.progress_interval_s,
            )
        except ToolError as exc:
            raise RestoreStepError("pg_restore", str(exc), touched=not request.replace) from None
        timings["pg_restore_s"] = result.duration_s

        # 6. Compare with the manifest.
        comparison: Optional[Comparison] = None
        if manifest is not None:
            t = time.monotonic()
            comparison = compare_restored(env.spec, restore_into, manifest)
            timings["compare_s"] = time.monotonic() - t
            if not comparison.passed:
                raise RestoreStepError("compare with manifest", comparison.summary(), touched=not request.replace)
            env.log(comparison.summary())

        # 7. Swap in (replace only).
        terminated = 0
        if request.replace:
            t = time.monotonic()
            terminated = _swap_in(env, restore_into, target, retired_database_name(target, now))
            timings["swap_s"] = time.monotonic() - t
        created = None  # success: keep it
        with _admin(env, "measure") as conn:
            restored_bytes = db.database_size(conn, target)
        timings["total_s"] = time.monotonic() - started
        return RestoreOutcome(
            request=request,
            backup_filename=fetched.located.filename,
            backup_location=fetched.located.where,
            sha256=fetched.archive.sha256,
            downloaded=fetched.downloaded is not None,
            archive_bytes=fetched.archive.raw_bytes,
            restored_bytes=restored_bytes,
            rto_s=timings["total_s"],
            comparison=comparison,
            safety_backup=safety,
            terminated_connections=terminated,
            timings=timings,
        )
    finally:
        fetched.cleanup()
        if created is not None:
            try:
                with db.admin_connection(env.spec) as conn:
                    db.drop_database(conn, created)
                env.warn(f"dropped database {created}, which this failed restore had created")
            except Exception as exc:  # report, but keep the original error
                env.warn(f"could not drop {created} after the failed restore: {exc}; drop it by hand")


def _swap_in(env: RestoreEnvironment, side: str, target: str, retired: str) -> int:
    """Replace ``target`` by ``side``: block and terminate sessions, rename both, drop the old database."""
    with _admin(env, "swap") as conn:
        try:
            db.block_connections(conn, target)
        except Exception as exc:
            raise RestoreStepError("swap", f"could not block new connections to {target}: {exc}") from None
        terminated = db.terminate_connections(conn, target)
        env.log(f"blocked new connections to {target} and terminated {terminated} session(s)")
        try:
            for _ in range(50):  # terminated backends take a moment to go
                if db.database_info(conn, target).connections == 0:  # type: ignore[union-attr]
                    break
                time.sleep(0.1)
            db.rename_database(conn, target, retired)
        except Exception as exc:
            db.allow_connections(conn, target)
            raise RestoreStepError("swap", f"could not rename {target} out of the way: {exc}; it is unchanged") from None
        try:
            db.rename_database(conn, side, target)
        except Exception as exc:
            db.rename_database(conn, retired, target)
            db.allow_connections(conn, target)
            raise RestoreStepError("swap", f"could not rename {side} to {target}: {exc}; the old database was put back") from None
        env.log(f"{target} now holds the restored data; dropping the replaced database ({retired})")
        try:
            db.drop_database(conn, retired)
        except Exception as exc:
            env.warn(f"could not drop the replaced database {retired}: {exc}; drop it by hand")
    return terminated


# ----------------------------------------------------------------------------------------------- drill


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
    scratch_dropped: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def drop_leftover_drills(env: RestoreEnvironment, now: datetime) -> list[str]:
    """Scratch databases of drills that were killed before they could clean up (idle and not recent)."""
    dropped = []
    with db.admin_connection(env.spec) as conn:
        for name, sessions in db.list_databases(conn, DRILL_PREFIX):
            created_at = drill_database_time(name)
            if created_at is None or sessions or now - created_at < LEFTOVER_DRILL_AGE:
                continue
            db.drop_database(conn, name)
            dropped.append(name)
    for name in dropped:
        env.warn(f"dropped {name}, the scratch database of an earlier drill that did not finish")
    return dropped


def run_drill(
    env: RestoreEnvironment, ref: BackupRef, *, jobs: int = 2, now: Optional[datetime] = None
) -> DrillResult:
    """Restore ``ref`` into a scratch database, compare with the manifest, always drop the scratch database.

    Never raises for a failed drill: the result says which step failed and why.
    """
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    scratch = drill_database_name(now)
    result = DrillResult(passed=False, backup_filename=ref.filename or "", scratch_database=scratch)
    step = "prepare"
    fetched: Optional[FetchedArchive] = None
    created = False
    try:
        drop_leftover_drills(env, now)
        step = "find backup"
        fetched = fetch_and_verify(ref, env)
        result.timings.update(fetched.timings)
        result.backup_filename = fetched.located.filename
        result.archive_bytes = fetched.archive.raw_bytes
        manifest = fetched.located.manifest
        if manifest is None:
            raise RestoreStepError("read manifest", f"{fetched.located.filename} has no manifest: nothing to compare with")
        result.expected_rows = dict(manifest.row_counts)
        result.expected_catalog = dict(manifest.catalog_counts)
        step = "create database"
        with db.admin_connection(env.spec) as conn:
            if db.database_exists(conn, scratch):
                raise RestoreStepError(step, f"scratch database {scratch} already exists")
            db.create_database(conn, scratch)
        created = True
        step = "pg_restore"
        env.log(f"drill: restoring {fetched.located.filename} into {scratch} with pg_restore -j {jobs}")
        restored = run_pg_restore(
            env.runner,
            env.spec,
            fetched.archive.path,
            scratch,
            jobs=jobs,
            expected_bytes=fetched.archive.raw_bytes,
            log=env.log,
            progress_interval_s=env.progress_interval_s,
        )
        result.timings["pg_restore_s"] = restored.duration_s
        result.rto_s = time.monotonic() - started
        step = "measure"
        with db.admin_connection(env.spec) as conn:
            result.restored_bytes = db.database_size(conn, scratch)
        step = "compare with manifest"
        t = time.monotonic()
        result.actual_rows, result.actual_catalog = actual_counts(env.spec, scratch)
        result.comparison = compare_with_manifest(
            result.expected_rows, result.expected_catalog, result.actual_rows, result.actual_catalog
        )
        result.timings["compare_s"] = time.monotonic() - t
        if not result.comparison.passed:
            raise RestoreStepError(step, result.comparison.summary())
        result.passed = True
        result.message = (
            f"{result.backup_filename} restored into {scratch} in {result.rto_s:.1f} s "
            f"({human_bytes(result.restored_bytes)}); {result.comparison.summary()}"
        )
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

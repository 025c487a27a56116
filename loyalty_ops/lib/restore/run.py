"""The restore itself and the restore drill, step by step, with nothing touched until the file is proven.

Order of a restore (:func:`restore_backup`):
1. check the target (read-only): refused if it exists in ``new_database`` mode, or is missing in ``replace``;
2. find the backup; check that the download, the decompressed archive, the safety backup and the new
   database fit on their filesystems (refused with the numbers if not); download it if it is only on S3;
3. hash and decompress it into a private temporary file; refused on a checksum mismatch or corrupt stream
   (``jobs: 1``: hash it and read the whole archive without writing it, then stream it into pg_restore);
4. ``replace`` only: take a safety backup of the target with the existing backup code;
5. create the database (``replace``: a side database next to the target), ``pg_restore -j N --exit-on-error``;
6. compare row and catalog counts with the backup's manifest;
7. ``replace`` only: block new connections to the target, terminate the others, swap the side database in
   by renaming, drop the old one. A failure before this step leaves the target exactly as it was.
Temporary files are removed whatever happens; a database this run created is dropped if the run fails.

Which backup ``latest`` means, and the fall back to the S3 copy of a damaged file, live in ``fetch.py``;
the drill (:func:`run_drill`) in ``drill.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from loyalty_ops.lib.backup.dump import BackupError, BackupRequest, take_backup
from loyalty_ops.lib.pg.tools import ToolError
from loyalty_ops.lib.restore import database as db
from loyalty_ops.lib.restore.counts import compare_restored
from loyalty_ops.lib.restore.drill import DrillResult, drop_leftover_drills, run_drill
from loyalty_ops.lib.restore.environment import RestoreEnvironment
from loyalty_ops.lib.restore.errors import RestoreRefused, RestoreStepError
from loyalty_ops.lib.restore.fetch import FetchedArchive, FetchPlan, fetch_and_verify
from loyalty_ops.lib.restore.plan import RestoreRequest, retired_database_name, side_database_name
from loyalty_ops.lib.restore.pg_restore import run_pg_restore
from loyalty_ops.lib.restore.archive_passes import ArchiveChanged
from loyalty_ops.lib.restore.space import SpaceReport, check_restore_space
from loyalty_ops.lib.restore.verify import Comparison

__all__ = [
    "DrillResult",
    "FetchedArchive",
    "RestoreEnvironment",
    "RestoreOutcome",
    "drop_leftover_drills",
    "fetch_and_verify",
    "restore_backup",
    "run_drill",
    "take_safety_backup",
]


def take_safety_backup(env: RestoreEnvironment, database: str) -> Path:
    """A fresh backup of ``database`` (with sidecar and manifest) before it is replaced.

    It goes to ``<backup dir>/safety/``: beside the nightly backups it would pass for the newest one
    (``latest`` would pick it, and retention would see a backup with no verification history). Restore it
    by file name ``safety/<file>``. Encrypted to the backups' recipients when they are (a ``.age`` file), so a
    replace never leaves a plaintext copy of a database whose backups are encrypted.
    """
    spec = env.spec.with_database(database)
    result = take_backup(
        spec,
        env.runner,
        BackupRequest(backup_dir=env.location.safety_dir, compression=env.compression, progress_interval_s=env.progress_interval_s,
                      age_recipients=env.age_recipients),
        on_progress=env.on_progress,
        log=env.log,
    )
    return result.path  # take_backup wrote its sidecar and manifest before giving it its name


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
    skipped_backups: list[str] = field(default_factory=list)  # newer backups `latest` passed over, with why
    notes: list[str] = field(default_factory=list)  # how the backup was chosen and where it was read from
    database_locale: str = ""  # the encoding and locale the restored database was created with
    streamed: bool = False  # jobs 1: streamed into pg_restore, no temporary copy of the archive
    space: Optional[SpaceReport] = None  # the disk-space check made before anything was written


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

    # 2-3. Find, check the space, download, verify, decompress (jobs 1: verify only, to stream).
    space: list[SpaceReport] = []
    stream = request.jobs == 1
    plan = FetchPlan(
        stream=stream,
        before_fetch=lambda located: space.append(
            check_restore_space(env, located, stream=stream, safety_backup=request.replace)
        ),
    )
    fetched = fetch_and_verify(request.backup, env, plan)
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
        like = info if request.replace else None
        locale = dict(manifest.database_locale) if manifest is not None else {}
        if not locale.get("encoding") and like is not None:
            locale = {"encoding": like.encoding, "lc_collate": like.collate, "lc_ctype": like.ctype}
        with _admin(env, "create database") as conn:
            try:
                db.create_database(conn, restore_into, like=like, locale=locale)
            except Exception as exc:
                raise RestoreStepError(
                    "create database",
                    f"CREATE DATABASE {restore_into} with {db.describe_locale(locale)} failed: {exc}. If that locale "
                    "does not exist on this server, install it (locale-gen) or restore on a server that has it",
                ) from None
        created = restore_into
        env.log(
            f"created database {restore_into} with {db.describe_locale(locale)}; "
            f"running pg_restore -j {request.jobs} --exit-on-error"
            + (" reading the archive from its standard input" if fetched.archive.streamed else "")
        )
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
                feed=fetched.feed(),
            )
        except ToolError as exc:
            raise RestoreStepError("pg_restore", str(exc), touched=not request.replace) from None
        except ArchiveChanged as exc:
            raise RestoreStepError("pg_restore", exc.detail, touched=not request.replace) from None
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

        # 6b. The database's own grants and settings (and owner, unless no_owner), as the manifest recorded them.
        if manifest is not None and manifest.database_properties:
            from loyalty_ops.lib.restore.new_server import apply_database_properties  # new_server imports this module's peers

            properties = dict(manifest.database_properties)
            if request.no_owner or request.replace:  # replace keeps the replaced database's owner
                properties.pop("owner", None)
            applied, missing = apply_database_properties(env, restore_into, properties, touched=not request.replace)
            env.log(f"applied the database's recorded grants and settings ({applied} statement(s))")
            if missing:
                env.warn(f"grants or settings of roles this server does not have were left out: {', '.join(missing)}")

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
            skipped_backups=list(fetched.skipped),
            notes=list(fetched.notes),
            database_locale=db.describe_locale(locale),
            streamed=fetched.archive.streamed,
            space=space[0] if space else None,
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

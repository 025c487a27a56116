"""A restore onto a brand-new, empty server: the guide's worst day (the database host or its disk is gone).

Order (:func:`restore_onto_new_server`), nothing changed until the backup is proven:
1. check the server: the target database must not exist; the restoring role must be able to create roles
   and databases;
2. find the backup (``latest`` works from S3 alone, with no local files and no Dagster history), download
   it, verify its SHA-256 and decompress it (as every restore does); fetch its cluster globals file and
   verify it against the manifest;
3. replay the globals (roles with their password hashes, memberships, tablespaces): roles that already
   exist are left exactly as they are and reported, never altered or dropped (``globals_script``);
4. create the database with its recorded encoding and locale, owned by its original owner;
5. ``pg_restore -j N --exit-on-error`` *with* owners, so every object belongs to the role that owned it;
6. give the database its recorded properties: grants, ``ALTER DATABASE ... SET``, role settings in it,
   connection limit, comment;
7. compare row and catalog counts with the manifest.
A failure after step 4 drops the database this run created; roles created in step 3 stay (they are
reported, and a second run leaves them as they are).
"""

from __future__ import annotations

import gzip
import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from loyalty_ops.lib.backup.encryption import AGE_SUFFIX, unseal_bytes
from loyalty_ops.lib.backup.globals import database_property_statements, missing_roles
from loyalty_ops.lib.backup.manifest import BackupManifest
from loyalty_ops.lib.pg.tools import ToolError
from loyalty_ops.lib.restore import database as db
from loyalty_ops.lib.restore.counts import compare_restored
from loyalty_ops.lib.restore.environment import RestoreEnvironment
from loyalty_ops.lib.restore.errors import MissingKey, RestoreRefused, RestoreStepError
from loyalty_ops.lib.restore.fetch import FetchedArchive, fetch_and_verify
from loyalty_ops.lib.restore.globals_script import GlobalsPlan, GlobalsScriptError, plan_globals
from loyalty_ops.lib.restore.plan import RestoreRequest
from loyalty_ops.lib.restore.pg_restore import run_pg_restore
from loyalty_ops.lib.restore.source import MISSING_KEY_HINT, LocatedBackup



@dataclass
class NewServerOutcome:
    target_database: str
    backup_filename: str
    backup_location: str
    sha256: str
    downloaded: bool
    archive_bytes: int
    restored_bytes: int
    rto_s: float
    globals_filename: str
    role_passwords: bool
    roles: GlobalsPlan
    comparison: Any
    owner: str
    properties_applied: int
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    database_locale: str = ""


def fetch_globals(located: LocatedBackup, manifest: BackupManifest, env: RestoreEnvironment) -> str:
    """The globals file beside the backup (on this machine, else on S3), verified against the manifest's
    SHA-256, unsealed (age) and decompressed. Raises :class:`RestoreRefused`."""
    recorded = manifest.globals or {}
    if not recorded.get("filename"):
        raise RestoreRefused(
            "fetch globals",
            f"{located.filename} was taken before backups carried the cluster globals, so the roles cannot be "
            "restored from it: create the roles by hand, then restore with mode new_database",
        )
    name = recorded["filename"]
    content: Optional[bytes] = None
    where = ""
    if located.local_path is not None and (located.local_path.parent / name).is_file():
        where = str(located.local_path.parent / name)
        content = Path(where).read_bytes()
    elif env.s3 is not None:
        key = env.location.globals_name(located.s3_key or env.location.key_for(env.location.parse_name(located.filename)))
        where = env.location.uri_for(key)
        try:
            content = env.s3.get_object(Bucket=env.location.bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore's errors: missing key, access denied, network
            raise RestoreRefused("fetch globals", f"{where} cannot be read: {exc}") from None
    if content is None:
        raise RestoreRefused("fetch globals", f"{name} is neither beside {located.where} nor on S3")
    actual = hashlib.sha256(content).hexdigest()
    if actual != recorded.get("sha256"):
        raise RestoreRefused(
            "fetch globals", f"{where} hashes to {actual} but the manifest records {recorded.get('sha256')}: it is corrupt or was changed"
        )
    if name.endswith(AGE_SUFFIX):
        if not env.identities:
            raise MissingKey("fetch globals", f"{name} is encrypted: {MISSING_KEY_HINT}")
        try:
            content = unseal_bytes(content, env.identities)
        except ValueError as exc:
            raise RestoreRefused("fetch globals", f"{name}: {exc}") from None
    try:
        return gzip.decompress(content).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RestoreRefused("fetch globals", f"{name} does not decompress: {exc}") from None


def apply_database_properties(env: RestoreEnvironment, database: str, properties: dict, *, touched: bool = True) -> tuple[int, list[str]]:
    """Give ``database`` the recorded owner, grants and settings (those of roles this server has). Returns how
    many statements ran and the roles the properties name that are missing here. Raises RestoreStepError."""
    with _admin(env, "database properties") as conn:
        roles = _names(conn, "SELECT rolname FROM pg_roles")
        statements = database_property_statements(properties, database, roles)
        for statement in statements:
            try:
                conn.execute(statement)
            except Exception as exc:
                raise RestoreStepError("database properties", f"{statement.as_string(conn)} failed: {exc}", touched=touched) from None
    return len(statements), missing_roles(properties, roles)


def _names(conn, query: str) -> set[str]:
    return {row[0] for row in conn.execute(query).fetchall()}


def _admin(env: RestoreEnvironment, step: str):
    try:
        return db.admin_connection(env.spec)
    except ConnectionError as exc:
        raise RestoreRefused(step, str(exc)) from None


def restore_onto_new_server(request: RestoreRequest, env: RestoreEnvironment, *, now: Optional[datetime] = None) -> NewServerOutcome:
    """Run a validated ``new_server`` request. Raises :class:`RestoreRefused` (nothing changed) or
    :class:`RestoreStepError`."""
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    target = request.target_database
    timings: dict[str, float] = {}

    # 1. The server, read-only.
    with _admin(env, "check server") as conn:
        if db.database_exists(conn, target):
            raise RestoreRefused(
                "check server",
                f"database {target!r} already exists on this server; new_server mode restores onto a server that "
                "does not have it (use mode replace to overwrite it)",
            )
        row = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not row or not (row[0] or row[1]) or not row[2]:
            raise RestoreRefused(
                "check server",
                f"role {env.spec.user or '(default)'} may not create roles and databases (needs SUPERUSER, or "
                "CREATEROLE and CREATEDB); connect as the new server's administrator",
            )

    # 2. The backup and its globals, proven before anything changes.
    fetched: FetchedArchive = fetch_and_verify(request.backup, env)
    timings.update(fetched.timings)
    created = False
    try:
        manifest = fetched.located.manifest
        if manifest is None:
            raise RestoreRefused("fetch globals", f"{fetched.located.filename} has no manifest: its roles and properties are unknown")
        t = time.monotonic()
        script = fetch_globals(fetched.located, manifest, env)
        with _admin(env, "restore globals") as conn:
            roles_here = _names(conn, "SELECT rolname FROM pg_roles")
            tablespaces_here = _names(conn, "SELECT spcname FROM pg_tablespace")
            try:
                plan = plan_globals(script, roles_here, tablespaces_here)
            except GlobalsScriptError as exc:
                raise RestoreRefused("restore globals", str(exc)) from None
            # 3. Roles, memberships, tablespaces.
            for statement in plan.statements:
                try:
                    conn.execute(statement)
                except Exception as exc:
                    raise RestoreStepError(
                        "restore globals",
                        f"{str(exc).splitlines()[0]} (after creating {', '.join(plan.created_roles) or 'no role'}; roles "
                        "created so far stay and are left alone by a second run)",
                        touched=True,
                    ) from None
            roles_now = _names(conn, "SELECT rolname FROM pg_roles")
        timings["globals_s"] = time.monotonic() - t
        env.log(f"cluster globals from {manifest.globals['filename']}: {plan.summary()}")
        warnings: list[str] = []
        if not manifest.globals.get("role_passwords", True):
            warnings.append(
                f"the backup's globals were taken without password hashes: the restored roles "
                f"({', '.join(plan.created_roles)}) have NO password; set each login role's password "
                "(ALTER ROLE name PASSWORD '...') from the secret store before the application connects"
            )
        properties = dict(manifest.database_properties or {})
        missing = missing_roles(properties, roles_now)
        if missing:
            warnings.append(f"roles named by the database's properties are not on this server: {', '.join(missing)}")

        # 4. The database, owned by its original owner.
        owner = properties.get("owner") if properties.get("owner") in roles_now else None
        locale = dict(manifest.database_locale or {})
        with _admin(env, "create database") as conn:
            try:
                db.create_database(conn, target, locale=locale)
            except Exception as exc:
                raise RestoreStepError("create database", f"CREATE DATABASE {target} with {db.describe_locale(locale)} failed: {exc}") from None
        created = True

        # 5. pg_restore with owners.
        env.log(f"created database {target}; running pg_restore -j {request.jobs} --exit-on-error with the original owners")
        try:
            result = run_pg_restore(
                env.runner, env.spec, fetched.archive.path, target, jobs=request.jobs, no_owner=False,
                expected_bytes=fetched.archive.raw_bytes, log=env.log, progress_interval_s=env.progress_interval_s,
            )
        except ToolError as exc:
            raise RestoreStepError("pg_restore", str(exc), touched=True) from None
        timings["pg_restore_s"] = result.duration_s

        # 6. The database's own properties.
        t = time.monotonic()
        applied, _missing = apply_database_properties(env, target, properties)
        timings["properties_s"] = time.monotonic() - t
        env.log(f"applied {applied} database propert(ies): owner {owner or '(restoring role)'}, grants, settings")

        # 7. Compare with the manifest.
        t = time.monotonic()
        comparison = compare_restored(env.spec, target, manifest)
        timings["compare_s"] = time.monotonic() - t
        if not comparison.passed:
            raise RestoreStepError("compare with manifest", comparison.summary(), touched=True)
        env.log(comparison.summary())
        for warning in warnings:
            env.warn(warning)
        with _admin(env, "measure") as conn:
            restored_bytes = db.database_size(conn, target)
        created = False  # success: keep it
        timings["total_s"] = time.monotonic() - started
        return NewServerOutcome(
            target_database=target,
            backup_filename=fetched.located.filename,
            backup_location=fetched.located.where,
            sha256=fetched.archive.sha256,
            downloaded=fetched.downloaded is not None,
            archive_bytes=fetched.archive.raw_bytes,
            restored_bytes=restored_bytes,
            rto_s=timings["total_s"],
            globals_filename=manifest.globals["filename"],
            role_passwords=bool(manifest.globals.get("role_passwords", True)),
            roles=plan,
            comparison=comparison,
            owner=owner or "",
            properties_applied=applied,
            warnings=warnings,
            notes=list(fetched.notes),
            timings=timings,
            database_locale=db.describe_locale(locale),
        )
    finally:
        fetched.cleanup()
        if created:
            try:
                with db.admin_connection(env.spec) as conn:
                    db.drop_database(conn, target)
                env.warn(f"dropped database {target}, which this failed restore had created")
            except Exception as exc:
                env.warn(f"could not drop {target} after the failed restore: {exc}; drop it by hand")

"""What a database needs from its cluster to come back on a new server: the cluster globals and the
database's own properties, taken with every backup.

- **Globals** (``pg_dumpall --globals-only``: roles with their password hashes, role settings, memberships,
  tablespaces) are dumped in memory (they are small), gzipped and written beside the backup as
  ``<database>_YYYYMMDD_HHMMSS.globals.sql.gz``; ``gunzip -c FILE | psql`` reads it. When the backup role
  cannot read the password hashes (``pg_authid``: not a superuser, managed services), the dump is taken
  with ``--no-role-passwords`` and the manifest says so: on restore the roles come back without passwords
  and on-call sets them (``ALTER ROLE ... PASSWORD``).
- **Database properties** (owner, encoding and locale, connection limit, ``ALTER DATABASE ... SET``,
  ``ALTER ROLE ... IN DATABASE ... SET``, database-level grants, its comment): pg_dump writes them only
  with ``--create``, so they are read from the catalog and recorded in the manifest, and a restore onto a
  new server applies them (:func:`database_property_statements`).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

import psycopg
from psycopg import sql

from loyalty_ops.lib.backup.naming import BackupName
from loyalty_ops.lib.pg.tools import PgToolRunner, ToolError, run_tool

GLOBALS_SUFFIX = ".globals.sql.gz"
GLOBALS_NAME_RE = re.compile(r"^(?P<base>[A-Za-z0-9_\-]+_\d{8}_\d{6})(?P<suffix>\.globals\.sql\.gz(?:\.age)?)$")
GLOBALS_LEVEL = 6  # a few kilobytes: the ratio matters more than the speed


def globals_filename(name: BackupName) -> str:
    """``<database>_YYYYMMDD_HHMMSS.globals.sql.gz`` (``.age`` appended when the backup is encrypted)."""
    return f"{name.database}_{name.taken_at:%Y%m%d_%H%M%S}{GLOBALS_SUFFIX}" + (".age" if name.encrypted else "")


def globals_filename_for(backup_filename: str) -> Optional[str]:
    """The globals file that belongs to a backup file name (None when it is not one)."""
    match = re.match(r"^([A-Za-z0-9_\-]+_\d{8}_\d{6})\.dump\.(?:gz|zst)(\.age)?$", backup_filename)
    if match is None:
        return None
    return match.group(1) + GLOBALS_SUFFIX + (match.group(2) or "")


@dataclass(frozen=True)
class GlobalsDump:
    """One globals dump, compressed, in memory until it is written beside its backup."""

    content: bytes  # what is stored: gzip (then age, when the backup is encrypted)
    sha256: str  # of ``content``
    raw_bytes: int  # of the SQL text
    role_passwords: bool  # False: taken with --no-role-passwords
    reason: str  # why passwords are (not) included
    roles: int  # CREATE ROLE statements in the dump
    pg_dumpall_version: str
    duration_s: float

    def manifest_entry(self, filename: str) -> dict[str, Any]:
        return {
            "filename": filename,
            "sha256": self.sha256,
            "bytes": len(self.content),
            "raw_bytes": self.raw_bytes,
            "role_passwords": self.role_passwords,
            "role_passwords_note": self.reason,
            "roles": self.roles,
            "pg_dumpall_version": self.pg_dumpall_version,
        }


NO_PASSWORDS_NOTE = (
    "taken with --no-role-passwords because the backup role cannot read password hashes (pg_authid): on a "
    "restore the roles come back WITHOUT passwords; set each login role's password (ALTER ROLE name PASSWORD "
    "'...') from the secret store before the application connects"
)


def can_read_role_passwords(conn: psycopg.Connection) -> bool:
    """Whether this session may read ``pg_authid`` (superusers, and roles granted ``pg_read_all_data``)."""
    row = conn.execute("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')").fetchone()
    return bool(row and row[0])


def dump_globals(
    runner: PgToolRunner,
    conn: psycopg.Connection,
    database: str,
    *,
    seal: Optional[Any] = None,
    log=lambda _m: None,
    passwords: Optional[bool] = None,
) -> GlobalsDump:
    """``pg_dumpall --globals-only`` (``--no-role-passwords`` when the hashes cannot be read), gzipped and,
    with ``seal`` (a callable bytes -> bytes, the backup's encryption), sealed. Raises :class:`ToolError`.
    ``passwords``: whether the hashes can be read, when the caller already asked (:func:`can_read_role_passwords`);
    ``conn`` is then not used (the dump may run on a thread while ``conn`` serves the backup)."""
    started = time.monotonic()
    if passwords is None:
        passwords = can_read_role_passwords(conn)
    args = ["--globals-only", "--no-password", f"--database={database}"]
    if passwords:
        reason = "role password hashes included (the backup role can read pg_authid)"
    else:
        args.append("--no-role-passwords")
        reason = NO_PASSWORDS_NOTE
        log(f"globals: {reason}")
    version = runner.tool_version("pg_dumpall")
    text = run_tool(runner, "pg_dumpall", args, database=database).stdout
    if b"CREATE ROLE" not in text:
        raise ToolError("pg_dumpall --globals-only wrote no CREATE ROLE statement: the globals dump is empty", tool="pg_dumpall")
    content = gzip.compress(text, compresslevel=GLOBALS_LEVEL, mtime=0)
    if seal is not None:
        content = seal(content)
    return GlobalsDump(
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        raw_bytes=len(text),
        role_passwords=passwords,
        reason=reason,
        roles=len(re.findall(rb"^CREATE ROLE ", text, flags=re.MULTILINE)),
        pg_dumpall_version=version,
        duration_s=time.monotonic() - started,
    )


# --------------------------------------------------------------------------- database properties


def database_properties(conn: psycopg.Connection, database: str) -> dict[str, Any]:
    """The database's own properties, for the manifest: owner, connection limit, comment, grants (exploded
    ACL; ``None`` when it has the default privileges) and settings (``ALTER DATABASE ... SET`` and
    ``ALTER ROLE ... IN DATABASE ... SET``)."""
    row = conn.execute(
        """
        SELECT pg_get_userbyid(d.datdba), d.datconnlimit, shobj_description(d.oid, 'pg_database'),
               d.datacl IS NULL,
               coalesce((SELECT json_agg(json_build_object(
                          'grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                          'privilege', a.privilege_type, 'grantable', a.is_grantable)
                          ORDER BY 1, a.privilege_type)
                         FROM aclexplode(d.datacl) a), '[]'::json),
               coalesce((SELECT json_agg(json_build_object(
                          'role', CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,
                          'settings', s.setconfig) ORDER BY s.setrole)
                         FROM pg_db_role_setting s WHERE s.setdatabase = d.oid), '[]'::json)
        FROM pg_database d WHERE d.datname = %s
        """,
        (database,),
    ).fetchone()
    if row is None:
        raise ValueError(f"database {database!r} not found in pg_database")
    owner, connlimit, comment, default_acl, grants, settings = row
    return {
        "name": database,
        "owner": owner,
        "connection_limit": int(connlimit),
        "comment": comment,
        "grants": None if default_acl else list(grants),
        "settings": list(settings),
    }


# Settings whose value is a list: each element is quoted on its own (as pg_dump does), else the list would
# become one element.
_LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries",
                  "shared_preload_libraries", "unix_socket_directories"}


def _setting_value(name: str, value: str) -> sql.Composable:
    if name.lower() in _LIST_SETTINGS:
        items = [item.strip() for item in value.split(",") if item.strip()]
        return sql.SQL(", ").join(sql.Literal(item.strip('"')) for item in items)
    return sql.Literal(value)


def database_property_statements(properties: dict[str, Any], database: str, existing_roles: set[str]) -> list[sql.Composable]:
    """Statements that give the restored ``database`` the recorded properties. Grants and settings of roles
    that do not exist on this server are left out (the caller reports them)."""
    db = sql.Identifier(database)
    out: list[sql.Composable] = []
    owner = properties.get("owner")
    if owner and owner in existing_roles:
        out.append(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(owner)))
    limit = properties.get("connection_limit", -1)
    if limit is not None and int(limit) != -1:
        out.append(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(int(limit))))
    if properties.get("comment"):
        out.append(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(properties["comment"])))
    grants = properties.get("grants")
    if grants is not None:
        # The recorded ACL replaces the defaults: revoke from everyone it names (and PUBLIC), grant it back.
        grantees = {"PUBLIC", *(g["grantee"] for g in grants)}
        for grantee in sorted(grantees):
            if grantee == "PUBLIC" or grantee in existing_roles:
                out.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, _grantee(grantee)))
        for grant in grants:
            if grant["grantee"] != "PUBLIC" and grant["grantee"] not in existing_roles:
                continue
            statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(_privilege(grant["privilege"])), db, _grantee(grant["grantee"])
            )
            if grant.get("grantable"):
                statement = sql.SQL("{} WITH GRANT OPTION").format(statement)
            out.append(statement)
    for entry in properties.get("settings") or ():
        role = entry.get("role")
        if role is not None and role not in existing_roles:
            continue
        for item in entry.get("settings") or ():
            name, _, value = item.partition("=")
            target = (
                sql.SQL("ALTER DATABASE {}").format(db) if role is None
                else sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), db)
            )
            out.append(sql.SQL("{} SET {} TO {}").format(target, sql.Identifier(*name.split(".")), _setting_value(name, value)))
    return out


def _grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def _privilege(name: str) -> str:
    if name not in ("CREATE", "CONNECT", "TEMPORARY"):
        raise ValueError(f"unknown database privilege {name!r} in the manifest")
    return name


def missing_roles(properties: dict[str, Any], existing_roles: set[str]) -> list[str]:
    """Roles the recorded properties name that this server does not have."""
    named = {properties.get("owner")}
    named |= {g["grantee"] for g in properties.get("grants") or () if g["grantee"] != "PUBLIC"}
    named |= {e["role"] for e in properties.get("settings") or () if e.get("role")}
    return sorted(n for n in named if n and n not in existing_roles)

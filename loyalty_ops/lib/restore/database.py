"""Database-level operations of a restore: exists, create, drop, block and terminate connections, rename.

They run on a maintenance connection (database ``postgres``, else ``template1``) in autocommit, because
CREATE/DROP/ALTER DATABASE cannot run inside a transaction. Names always go through ``sql.Identifier``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import psycopg
from psycopg import sql

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.session import DatabaseUnreachable, connect

MAINTENANCE_DATABASES = ("postgres", "template1")


def admin_connection(spec: ConnectionSpec) -> psycopg.Connection:
    """An autocommit connection to a maintenance database of the same server (``postgres``, else
    ``template1``). When neither answers, :class:`DatabaseUnreachable` (a ``ConnectionError``) names the first."""
    first: Optional[DatabaseUnreachable] = None
    for name in MAINTENANCE_DATABASES:
        try:
            return connect(spec.with_database(name), autocommit=True)
        except DatabaseUnreachable as exc:
            first = first or exc
    assert first is not None
    raise first


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    size_bytes: int
    connections: int


def database_info(conn: psycopg.Connection, name: str) -> Optional[DatabaseInfo]:
    row = conn.execute(
        """
        SELECT d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
               CASE WHEN d.datallowconn THEN pg_database_size(d.oid) ELSE 0 END,
               (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname AND a.pid <> pg_backend_pid())
        FROM pg_database d WHERE d.datname = %s
        """,
        (name,),
    ).fetchone()
    return DatabaseInfo(*row[:5], int(row[5]), int(row[6])) if row else None


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def database_size(conn: psycopg.Connection, name: str) -> int:
    row = conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
    return int(row[0])


def can_create_databases(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def create_database(
    conn: psycopg.Connection,
    name: str,
    *,
    like: Optional[DatabaseInfo] = None,
    locale: Optional[Mapping[str, str]] = None,
) -> None:
    """An empty database from template0 (so nothing of template1 leaks in).

    ``locale`` (a manifest's ``database_locale``) gives it the source database's encoding, LC_COLLATE, LC_CTYPE
    and locale provider, so a LATIN1 database comes back LATIN1; ``like`` (the database a replace swaps out)
    gives it that database's owner, and its encoding and locale when ``locale`` is empty.
    """
    query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if like is not None:
        query = sql.SQL("{} OWNER {}").format(query, sql.Identifier(like.owner))
    settings = dict(locale or {})
    if not settings.get("encoding") and like is not None:
        settings = {"encoding": like.encoding, "lc_collate": like.collate, "lc_ctype": like.ctype}
    if settings.get("encoding"):
        query = sql.SQL("{} ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            query, sql.Literal(settings["encoding"]), sql.Literal(settings["lc_collate"]), sql.Literal(settings["lc_ctype"])
        )
        if settings.get("locale_provider") == "icu":
            query = sql.SQL("{} LOCALE_PROVIDER icu ICU_LOCALE {}").format(query, sql.Literal(settings.get("icu_locale", "")))
    conn.execute(query)


def describe_locale(locale: Optional[Mapping[str, str]]) -> str:
    if not locale or not locale.get("encoding"):
        return "the server's default encoding and locale (the manifest records none)"
    text = f"ENCODING {locale['encoding']} LC_COLLATE {locale['lc_collate']} LC_CTYPE {locale['lc_ctype']}"
    if locale.get("locale_provider") == "icu":
        text += f" LOCALE_PROVIDER icu ICU_LOCALE {locale.get('icu_locale', '')}"
    return text


# Session advisory locks (in the maintenance database) that a live drill holds on its scratch database's
# name, so a concurrent drill's leftover cleanup never drops it, even on another host.
DRILL_LOCK_CLASS = 0x4C4F5944  # "LOYD"


def try_lock_drill(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (DRILL_LOCK_CLASS, name)).fetchone()
    return bool(row and row[0])


def unlock_drill(conn: psycopg.Connection, name: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (DRILL_LOCK_CLASS, name))


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """Drop ``name`` if it exists, terminating its sessions (PostgreSQL 13+ ``WITH (FORCE)``)."""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def block_connections(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))


def allow_connections(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


def terminate_connections(conn: psycopg.Connection, name: str) -> int:
    """Terminate every other session on ``name``; returns how many were terminated."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def rename_database(conn: psycopg.Connection, old: str, new: str) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def list_databases(conn: psycopg.Connection, like_prefix: str) -> list[tuple[str, int]]:
    """Databases whose name starts with ``like_prefix``, with their number of sessions."""
    pattern = like_prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"
    return [
        (name, int(sessions))
        for name, sessions in conn.execute(
            """
            SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname)
            FROM pg_database d WHERE d.datname LIKE %s ORDER BY 1
            """,
            (pattern,),
        ).fetchall()
    ]

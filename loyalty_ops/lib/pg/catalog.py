"""Catalog queries shared by backups, restore drills and reports.

Every function takes an open psycopg connection, so the caller chooses the transaction (for a backup:
the transaction that exported the dump's snapshot, so counts are exactly what the dump holds).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

# Schemas that belong to PostgreSQL itself, never to the application.
SYSTEM_SCHEMA_FILTER = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"


@dataclass(frozen=True, order=True)
class TableRef:
    """A user table: schema, name and owner (the owner is how pg_restore --list prints it)."""

    schema: str
    name: str
    owner: str = ""
    kind: str = "r"  # 'r' ordinary, 'p' partitioned parent (has no rows of its own)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def identifier(self) -> sql.Composed:
        return sql.Identifier(self.schema, self.name)


def list_user_tables(conn: psycopg.Connection) -> list[TableRef]:
    """Ordinary and partitioned tables outside the system schemas, not owned by an extension."""
    rows = conn.execute(
        f"""
        SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner), c.relkind::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """
    ).fetchall()
    return [TableRef(schema, name, owner, kind) for schema, name, owner, kind in rows]


def count_rows(conn: psycopg.Connection, tables: list[TableRef]) -> dict[str, int]:
    """Exact row counts, keyed by ``schema.name``. Partitioned parents count 0 (their partitions hold the rows)."""
    counts: dict[str, int] = {}
    for table in tables:
        if table.kind == "p":
            counts[table.qualified] = 0
            continue
        query = sql.SQL("SELECT count(*) FROM ONLY {}").format(table.identifier())
        counts[table.qualified] = conn.execute(query).fetchone()[0]
    return counts


def estimated_dump_bytes(conn: psycopg.Connection) -> int:
    """Heap size of user tables: a fair guess of an uncompressed dump's size, for progress and ETA."""
    row = conn.execute(
        f"""
        SELECT coalesce(sum(pg_relation_size(c.oid)), 0)::bigint
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm') AND {SYSTEM_SCHEMA_FILTER}
        """
    ).fetchone()
    return int(row[0])


CATALOG_COUNT_QUERIES: dict[str, str] = {
    "tables": f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER}",
    "indexes": f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('i', 'I') AND {SYSTEM_SCHEMA_FILTER}",
    "constraints": f"SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace "
    f"WHERE {SYSTEM_SCHEMA_FILTER}",
    "sequences": f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind = 'S' AND {SYSTEM_SCHEMA_FILTER}",
    "views": f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind IN ('v', 'm') AND {SYSTEM_SCHEMA_FILTER}",
    "functions": f"SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    f"WHERE {SYSTEM_SCHEMA_FILTER} AND NOT EXISTS (SELECT 1 FROM pg_depend d "
    f"WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')",
}


def catalog_counts(conn: psycopg.Connection) -> dict[str, int]:
    """How many tables, indexes, constraints, sequences, views and functions the user schemas hold."""
    return {name: int(conn.execute(query).fetchone()[0]) for name, query in CATALOG_COUNT_QUERIES.items()}


def materialized_views(conn: psycopg.Connection) -> dict[str, dict]:
    """Each user materialized view, keyed by ``schema.name``: ``{"populated": bool, "rows": int | None}``.

    An unpopulated view (``WITH NO DATA``) cannot be read, so its rows are None; a restore must bring it back
    unpopulated too, and a populated one with the same number of rows.
    """
    rows = conn.execute(
        f"""
        SELECT n.nspname, c.relname, c.relispopulated
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'm' AND {SYSTEM_SCHEMA_FILTER}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """
    ).fetchall()
    out: dict[str, dict] = {}
    for schema, name, populated in rows:
        count = None
        if populated:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            count = int(conn.execute(query).fetchone()[0])
        out[f"{schema}.{name}"] = {"populated": bool(populated), "rows": count}
    return out


def database_locale(conn: psycopg.Connection) -> dict[str, str]:
    """The current database's encoding and locale: what ``CREATE DATABASE`` needs to make an equal one.

    ``locale_provider`` is ``libc`` or ``icu`` (PostgreSQL 15+; older servers only have libc).
    """
    if conn.info.server_version >= 150000:
        row = conn.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
            "CASE datlocprovider WHEN 'i' THEN 'icu' ELSE 'libc' END, coalesce(daticulocale, '') "
            "FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype, 'libc', '' "
            "FROM pg_database WHERE datname = current_database()"
        ).fetchone()
    encoding, collate, ctype, provider, icu_locale = row
    out = {"encoding": encoding, "lc_collate": collate, "lc_ctype": ctype, "locale_provider": provider}
    if icu_locale:
        out["icu_locale"] = icu_locale
    return out


def snapshot_details(conn: psycopg.Connection) -> dict[str, dict]:
    """What a backup's manifest records besides tables and counts: materialized views and the database locale."""
    return {"materialized_views": materialized_views(conn), "database_locale": database_locale(conn)}


def server_version(conn: psycopg.Connection) -> tuple[int, int]:
    """The server's (major, minor) version, e.g. (15, 18)."""
    num = conn.info.server_version
    return num // 10000, num % 10000


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

"""Reading what the planner needs, without taking a lock on any user table.

``pg_stat_user_tables``, ``pg_stat_user_indexes`` (scans, shown in the plan), ``pg_class``, ``pg_index`` and
``pg_stats`` are read
directly; sizes come from ``pg_class.relpages`` (exact after VACUUM/ANALYZE) rather than
``pg_relation_size()``, because the size functions take ACCESS SHARE on the relation and would queue
behind a session holding ACCESS EXCLUSIVE. Exact before/after sizes are measured per object, under
``lock_timeout``, by the executor.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

import psycopg

from loyalty_ops.lib.maintenance.plan import IndexStats, TableStats
from loyalty_ops.lib.pg.catalog import SYSTEM_SCHEMA_FILTER

TABLE_STATS_SQL = f"""
SELECT c.oid::bigint, n.nspname, c.relname,
       -- after a statistics reset (crash, pg_stat_reset) n_live_tup is 0 until the next VACUUM/ANALYZE:
       -- then the catalog's reltuples is the better count of live rows
       CASE WHEN coalesce(s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze) IS NULL
            THEN greatest(s.n_live_tup, c.reltuples::bigint) ELSE s.n_live_tup END,
       s.n_dead_tup, s.n_mod_since_analyze,
       greatest(s.last_vacuum, s.last_autovacuum), greatest(s.last_analyze, s.last_autoanalyze),
       c.relpages::bigint * current_setting('block_size')::bigint
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND {SYSTEM_SCHEMA_FILTER}
ORDER BY n.nspname, c.relname
"""

# Per index: the catalog facts and, per key/INCLUDE column, the pg_stats width and null fraction the
# B-tree bloat estimate needs (expression columns have their statistics under the index's own name).
# Set-based on purpose: a per-index LATERAL over the pg_stats view took 12 s for 500 indexes, this 0.04 s.
INDEX_STATS_SQL = f"""
WITH idx AS (
    SELECT i.indexrelid, i.indrelid, n.nspname, t.relname AS table_name, ci.relname AS index_name, am.amname,
           i.indisvalid, ci.relpages, ci.reltuples, ci.reloptions, i.indnatts, i.indkey
    FROM pg_index i
    JOIN pg_class ci ON ci.oid = i.indexrelid
    JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = ci.relnamespace
    JOIN pg_am am ON am.oid = ci.relam
    WHERE t.relkind IN ('r', 'm') AND {SYSTEM_SCHEMA_FILTER}
), cols AS (
    SELECT idx.indexrelid, idx.nspname,
           CASE WHEN idx.indkey[k.pos] = 0 THEN idx.indexrelid ELSE idx.indrelid END AS attrelid,
           CASE WHEN idx.indkey[k.pos] = 0 THEN k.pos + 1 ELSE idx.indkey[k.pos] END AS attnum,
           CASE WHEN idx.indkey[k.pos] = 0 THEN idx.index_name ELSE idx.table_name END AS stat_table
    FROM idx CROSS JOIN LATERAL generate_series(0, idx.indnatts - 1) AS k(pos)
), st AS (
    SELECT c.indexrelid, count(s.attname) AS with_stats,
           sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 1024)) AS data_width,
           max(coalesce(s.null_frac, 0)) AS max_null_frac
    FROM cols c
    JOIN pg_attribute a ON a.attrelid = c.attrelid AND a.attnum = c.attnum
    LEFT JOIN pg_stats s ON s.schemaname = c.nspname AND s.tablename = c.stat_table AND s.attname = a.attname
                        AND NOT s.inherited
    GROUP BY c.indexrelid
)
SELECT idx.indexrelid::bigint, idx.nspname, idx.table_name, idx.index_name, idx.amname, idx.indisvalid,
       idx.relpages::bigint, idx.reltuples::float8,
       coalesce((SELECT o.option_value::int FROM pg_options_to_table(idx.reloptions) o
                 WHERE o.option_name = 'fillfactor'), 90),
       idx.indnatts::int,
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = idx.indexrelid AND k.contype = 'x'),
       coalesce(st.with_stats, 0)::int, coalesce(st.data_width, 0)::float8, coalesce(st.max_null_frac, 0)::float8,
       -- live rows only when the statistics know the table (after a stats reset or a crash both are 0)
       CASE WHEN pg_stat_get_live_tuples(idx.indrelid) + pg_stat_get_dead_tuples(idx.indrelid) > 0
            THEN pg_stat_get_live_tuples(idx.indrelid) END,
       ui.idx_scan
FROM idx
LEFT JOIN st ON st.indexrelid = idx.indexrelid
LEFT JOIN pg_stat_user_indexes ui ON ui.indexrelid = idx.indexrelid
ORDER BY idx.nspname, idx.table_name, idx.index_name
"""


def read_table_stats(conn: psycopg.Connection) -> list[TableStats]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(TABLE_STATS_SQL).fetchall()
    return [
        TableStats(
            oid=int(oid), schema=schema, name=name, live_tuples=int(live or 0), dead_tuples=int(dead or 0),
            mods_since_analyze=int(mods or 0), last_vacuum=last_vac, last_analyze=last_an, est_bytes=int(size or 0),
        )
        for oid, schema, name, live, dead, mods, last_vac, last_an, size in rows
    ]


def read_index_stats(conn: psycopg.Connection) -> list[IndexStats]:
    rows = conn.execute(INDEX_STATS_SQL).fetchall()
    return [
        IndexStats(
            oid=int(oid), schema=schema, table=table, name=name, access_method=am, valid=bool(valid),
            relpages=int(pages), reltuples=float(tuples), fillfactor=int(ff), columns=int(ncols),
            is_exclusion=bool(excl), columns_with_stats=int(with_stats), data_width=float(width),
            max_null_frac=float(null_frac), table_live_tuples=None if live is None else int(live),
            scans=None if scans is None else int(scans),
        )
        for oid, schema, table, name, am, valid, pages, tuples, ff, ncols, excl, with_stats, width, null_frac, live, scans
        in rows
    ]


def server_now(conn: psycopg.Connection) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]


def current_database(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT current_database()").fetchone()[0]


def dead_tuples(conn: psycopg.Connection, table_oid: int) -> Optional[int]:
    """Dead tuples the statistics system counts for one table (lock-free)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = %s::oid", (table_oid,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def dead_tuples_all(conn: psycopg.Connection) -> dict[int, int]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute("SELECT relid::bigint, n_dead_tup FROM pg_stat_user_tables").fetchall()
    return {int(oid): int(dead or 0) for oid, dead in rows}


def index_oid(conn: psycopg.Connection, schema: str, name: str) -> Optional[int]:
    """An index's current oid by name (REINDEX CONCURRENTLY gives the rebuilt index a new oid)."""
    row = conn.execute(
        "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('i', 'I')",
        (schema, name),
    ).fetchone()
    return int(row[0]) if row else None


def leftover_indexes(conn: psycopg.Connection) -> list[IndexStats]:
    """Invalid ``_ccnew``/``_ccold`` indexes anywhere in the user schemas."""
    return [i for i in read_index_stats(conn) if i.is_leftover]


def lock_holders(conn: psycopg.Connection, relation_oid: int) -> list[str]:
    """Who holds a lock on a relation right now (other sessions): for the 'skipped because' message."""
    rows = conn.execute(
        """
        SELECT l.pid, l.mode, coalesce(a.application_name, ''), coalesce(a.state, ''),
               extract(epoch FROM now() - a.xact_start)::int
        FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'relation' AND l.relation = %s::oid AND l.granted AND l.pid <> pg_backend_pid()
        ORDER BY l.pid
        """,
        (relation_oid,),
    ).fetchall()
    out = []
    for pid, mode, app, state, xact_age in rows:
        who = f"pid {pid} {mode}"
        extras = [x for x in (f"app {app!r}" if app else "", state, f"transaction open {xact_age} s" if xact_age else "") if x]
        out.append(who + (f" ({', '.join(extras)})" if extras else ""))
    return out

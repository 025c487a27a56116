"""Generator of a sample loyalty database: tenants, members, a points ledger (events), rewards, redemptions.

One knob, ``scale``: 1.0 is about 20 MB on disk (100k ledger events); about 50 gives 1 GB. Rows are
generated server-side with ``generate_series`` and deterministic pseudo-random values, so the same scale
always gives the same data. The README's run command, the tests and the benchmarks all use it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import psycopg
from psycopg import sql

SCHEMA_SQL = """
CREATE TABLE tenants (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    country     text NOT NULL DEFAULT 'ZW',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE members (
    id              bigserial PRIMARY KEY,
    tenant_id       integer NOT NULL REFERENCES tenants(id),
    email           text NOT NULL,
    full_name       text NOT NULL,
    tier            text NOT NULL CHECK (tier IN ('bronze', 'silver', 'gold', 'platinum')),
    points_balance  bigint NOT NULL DEFAULT 0,
    joined_at       timestamptz NOT NULL,
    UNIQUE (tenant_id, email)
);
CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    tenant_id   integer NOT NULL REFERENCES tenants(id),
    member_id   bigint NOT NULL REFERENCES members(id),
    kind        text NOT NULL CHECK (kind IN ('earn', 'burn', 'expire', 'adjust')),
    points      integer NOT NULL,
    created_at  timestamptz NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_tenant_created_idx ON events (tenant_id, created_at DESC);
CREATE INDEX events_member_idx ON events (member_id);
CREATE TABLE rewards (
    id           serial PRIMARY KEY,
    tenant_id    integer NOT NULL REFERENCES tenants(id),
    name         text NOT NULL,
    cost_points  integer NOT NULL CHECK (cost_points > 0),
    stock        integer NOT NULL DEFAULT 0
);
CREATE TABLE redemptions (
    id           bigserial PRIMARY KEY,
    member_id    bigint NOT NULL REFERENCES members(id),
    reward_id    integer NOT NULL REFERENCES rewards(id),
    points       integer NOT NULL,
    status       text NOT NULL DEFAULT 'completed',
    redeemed_at  timestamptz NOT NULL
);
CREATE INDEX redemptions_member_idx ON redemptions (member_id);
CREATE VIEW member_points AS
    SELECT m.id AS member_id, m.tenant_id, coalesce(sum(e.points), 0) AS points
    FROM members m LEFT JOIN events e ON e.member_id = m.id GROUP BY m.id, m.tenant_id;
CREATE FUNCTION tier_for(points bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN points >= 100000 THEN 'platinum' WHEN points >= 20000 THEN 'gold'
                WHEN points >= 5000 THEN 'silver' ELSE 'bronze' END
$$;
"""

# hashint(x) is a deterministic pseudo-random non-negative integer derived from x.
HASHINT_SQL = """
CREATE FUNCTION pg_temp.hashint(x bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS
    $$ SELECT abs(hashtextextended(x::text, 42)) $$;
"""

# Row g (1..N) of each table, in load order: (columns, select list over g, what follows generate_series).
# Both ways of loading use these: one INSERT per table, or ranges of g with the id given as g.
# ``%%`` is SQL's modulo; ``%(name)s`` is filled from row_targets() by Python formatting.
ROWS = {
    "tenants": (
        "name, country, created_at",
        "'tenant_' || g, (ARRAY['ZW','ZA','ZM','BW'])[1 + g %% 4], timestamptz '2023-01-01' + g * interval '3 days'",
        "",
    ),
    "members": (
        "tenant_id, email, full_name, tier, points_balance, joined_at",
        "1 + g %% %(tenants)s, 'member' || g || '@example.co.zw', 'Member ' || g,\n"
        "           (ARRAY['bronze','silver','gold','platinum'])[1 + pg_temp.hashint(g) %% 4],\n"
        "           pg_temp.hashint(g) %% 50000, timestamptz '2023-01-01' + (pg_temp.hashint(g) %% 700) * interval '1 day'",
        "",
    ),
    "events": (
        "tenant_id, member_id, kind, points, created_at, payload",
        "1 + m %% %(tenants)s, m,\n"
        "           (ARRAY['earn','earn','earn','burn','expire','adjust'])[1 + pg_temp.hashint(g) %% 6],\n"
        "           (pg_temp.hashint(g) %% 900) - 100,\n"
        "           timestamptz '2024-01-01' + (pg_temp.hashint(g * 7) %% 31536000) * interval '1 second',\n"
        "           jsonb_build_object('channel', (ARRAY['pos','app','web'])[1 + g %% 3], 'receipt', md5(g::text))",
        ", LATERAL (SELECT 1 + pg_temp.hashint(g * 3) %% %(members)s AS m) pick",
    ),
    "rewards": (
        "tenant_id, name, cost_points, stock",
        "1 + g %% %(tenants)s, 'Reward ' || g, 100 + (pg_temp.hashint(g) %% 50) * 100, pg_temp.hashint(g) %% 500",
        "",
    ),
    "redemptions": (
        "member_id, reward_id, points, status, redeemed_at",
        "1 + pg_temp.hashint(g) %% %(members)s, 1 + pg_temp.hashint(g * 5) %% %(rewards)s,\n"
        "           100 + pg_temp.hashint(g) %% 5000, (ARRAY['completed','completed','pending','cancelled'])[1 + g %% 4],\n"
        "           timestamptz '2024-01-01' + (pg_temp.hashint(g * 11) %% 31536000) * interval '1 second'",
        "",
    ),
}


def insert_sql(table: str, first: str, last: str, *, explicit_id: bool = False) -> str:
    """The INSERT of rows ``first``..``last`` of ``table`` (still to be %-formatted with row_targets())."""
    columns, select, after = ROWS[table]
    if explicit_id:  # what the serial column gives row g when one INSERT loads the table: nextval() = g
        columns, select = "id, " + columns, "g, " + select
    return (
        f"INSERT INTO {table} ({columns})\n    SELECT {select}\n"
        f"    FROM generate_series({first}, {last}) g{after};\n"
    )


DATA_SQL = HASHINT_SQL + "".join(insert_sql(table, "1", f"%({table})s") for table in ROWS)


def row_targets(scale: float) -> dict[str, int]:
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return {
        "tenants": max(2, int(5 * min(scale, 10))),
        "members": max(50, int(20_000 * scale)),
        "events": max(200, int(100_000 * scale)),
        "rewards": max(5, int(50 * min(scale, 20))),
        "redemptions": max(20, int(10_000 * scale)),
    }


def create_sample_schema(conn: psycopg.Connection, scale: float = 1.0, *, analyze: bool = True) -> dict[str, int]:
    """Create the loyalty schema in the connected (empty) database and fill it. Returns rows per table."""
    targets = row_targets(scale)
    with conn.transaction():
        conn.execute(SCHEMA_SQL)
        # Python formatting fills the counts (``%%`` is SQL's modulo); no parameters reach the server.
        conn.execute(DATA_SQL % targets)
    if analyze:
        with conn.cursor() as cur:
            if conn.autocommit:
                cur.execute("ANALYZE")
    return targets


# -- the same database, faster, for large scales -----------------------------------------------------------

# The constraints and indexes the bulk load takes off and puts back, read from the catalog so their names
# and definitions are exactly those SCHEMA_SQL made. Foreign keys go last (they need the keys they point at).
_DEFERRED_SQL = """
SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype = 'f'
FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
WHERE t.relnamespace = 'public'::regnamespace AND t.relname = ANY(%s) AND c.contype IN ('p', 'u', 'f')
ORDER BY c.contype = 'f', c.conrelid, c.conname
"""
_LOOSE_INDEXES_SQL = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), false
FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
WHERE t.relnamespace = 'public'::regnamespace AND t.relname = ANY(%s)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY 1
"""


def bulk_load_sample(
    connect: Callable[[], psycopg.Connection],
    scale: float,
    *,
    workers: int = 2,
    chunk_rows: int = 1_000_000,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, int]:
    """The database :func:`create_sample_schema` makes (same schema, names, rows, ids and sequence
    positions), built the way large samples load fast: constraints and indexes taken off, the rows
    inserted in ranges of ``chunk_rows`` by ``workers`` connections at once (each row with the id the
    serial column would have given it), then the indexes built and the keys validated in one pass each,
    sequences set, VACUUM ANALYZE. Only the physical order of rows in the heap differs (ranges interleave)
    and the indexes are built packed. ``connect()`` returns a new autocommit connection to the (empty)
    database. Progress (rows, percent, ETA) goes to ``log`` after every range. Returns rows per table.
    """
    targets = row_targets(scale)
    tables = list(ROWS)
    with connect() as conn:
        with conn.transaction():
            conn.execute(SCHEMA_SQL)
            deferred = conn.execute(_DEFERRED_SQL, (tables,)).fetchall()
            indexes = conn.execute(_LOOSE_INDEXES_SQL, (tables,)).fetchall()
            for table, name, _definition, _is_fk in reversed(deferred):  # foreign keys first
                conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(table), sql.Identifier(name)))
            for name, _definition, _is_fk in indexes:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))

    ranges = [
        (table, first, min(first + chunk_rows - 1, targets[table]))
        for table in tables
        for first in range(1, targets[table] + 1, chunk_rows)
    ]
    total = sum(targets.values())
    done = 0
    started = time.monotonic()
    lock = threading.Lock()
    queue = list(reversed(ranges))  # popped from the end: tables in load order
    failures: list[BaseException] = []

    def load() -> None:
        nonlocal done
        with connect() as conn:
            conn.execute(HASHINT_SQL)
            while not failures:
                with lock:
                    if not queue:
                        return
                    table, first, last = queue.pop()
                try:
                    conn.execute(insert_sql(table, str(first), str(last), explicit_id=True) % targets)
                except BaseException as exc:  # stop the other workers too; raised below
                    failures.append(exc)
                    return
                with lock:
                    done += last - first + 1
                    elapsed = time.monotonic() - started
                    eta = elapsed / done * (total - done)
                    log(f"sample rows: {done:,} of {total:,} ({100 * done / total:.0f} %), {table} up to {last:,}, "
                        f"{elapsed:.0f} s, ETA {eta:.0f} s")

    threads = [threading.Thread(target=load, name=f"sample-load-{i}") for i in range(max(1, workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]

    with connect() as conn:
        for table in tables:  # where nextval() stands after one INSERT of all the rows
            conn.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", (table, targets[table]))
        keys = [d for d in deferred if not d[3]]
        foreign_keys = [d for d in deferred if d[3]]
        for table, name, definition, is_fk in keys + [(None, *i) for i in indexes] + foreign_keys:
            step = time.monotonic()
            if table is None:  # an index that backs no constraint: its own CREATE INDEX
                conn.execute(definition)
            else:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(sql.Identifier(table), sql.Identifier(name))
                    + sql.SQL(definition)  # type: ignore[arg-type]  # the catalog's own text of the constraint
                )
            log(f"sample: {'validated' if is_fk else 'built'} {name} in {time.monotonic() - step:.0f} s")
        step = time.monotonic()
        conn.execute("VACUUM (ANALYZE)")
        log(f"sample: VACUUM ANALYZE in {time.monotonic() - step:.0f} s")
    return targets

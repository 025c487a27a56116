"""Generator of a sample loyalty database: tenants, members, a points ledger (events), rewards, redemptions.

One knob, ``scale``: 1.0 is about 20 MB on disk (100k ledger events); about 50 gives 1 GB. Rows are
generated server-side with ``generate_series`` and deterministic pseudo-random values, so the same scale
always gives the same data. The README's run command, the tests and the benchmarks all use it.
"""

from __future__ import annotations

import psycopg

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
DATA_SQL = """
CREATE FUNCTION pg_temp.hashint(x bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS
    $$ SELECT abs(hashtextextended(x::text, 42)) $$;
INSERT INTO tenants (name, country, created_at)
    SELECT 'tenant_' || g, (ARRAY['ZW','ZA','ZM','BW'])[1 + g %% 4], timestamptz '2023-01-01' + g * interval '3 days'
    FROM generate_series(1, %(tenants)s) g;
INSERT INTO members (tenant_id, email, full_name, tier, points_balance, joined_at)
    SELECT 1 + g %% %(tenants)s, 'member' || g || '@example.co.zw', 'Member ' || g,
           (ARRAY['bronze','silver','gold','platinum'])[1 + pg_temp.hashint(g) %% 4],
           pg_temp.hashint(g) %% 50000, timestamptz '2023-01-01' + (pg_temp.hashint(g) %% 700) * interval '1 day'
    FROM generate_series(1, %(members)s) g;
INSERT INTO events (tenant_id, member_id, kind, points, created_at, payload)
    SELECT 1 + m %% %(tenants)s, m,
           (ARRAY['earn','earn','earn','burn','expire','adjust'])[1 + pg_temp.hashint(g) %% 6],
           (pg_temp.hashint(g) %% 900) - 100,
           timestamptz '2024-01-01' + (pg_temp.hashint(g * 7) %% 31536000) * interval '1 second',
           jsonb_build_object('channel', (ARRAY['pos','app','web'])[1 + g %% 3], 'receipt', md5(g::text))
    FROM generate_series(1, %(events)s) g, LATERAL (SELECT 1 + pg_temp.hashint(g * 3) %% %(members)s AS m) pick;
INSERT INTO rewards (tenant_id, name, cost_points, stock)
    SELECT 1 + g %% %(tenants)s, 'Reward ' || g, 100 + (pg_temp.hashint(g) %% 50) * 100, pg_temp.hashint(g) %% 500
    FROM generate_series(1, %(rewards)s) g;
INSERT INTO redemptions (member_id, reward_id, points, status, redeemed_at)
    SELECT 1 + pg_temp.hashint(g) %% %(members)s, 1 + pg_temp.hashint(g * 5) %% %(rewards)s,
           100 + pg_temp.hashint(g) %% 5000, (ARRAY['completed','completed','pending','cancelled'])[1 + g %% 4],
           timestamptz '2024-01-01' + (pg_temp.hashint(g * 11) %% 31536000) * interval '1 second'
    FROM generate_series(1, %(redemptions)s) g;
"""


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

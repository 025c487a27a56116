"""Benchmark: smart weekly maintenance against the guide's `VACUUM ANALYZE` + `REINDEX DATABASE`, on a
database shaped like production and with an API-like writer running. (About 530 lines: the database's
shape, the writer and the round loop belong together and nothing else uses them.)

The shape (``--scale 1`` is about 2.1 GB on disk; ``--scale 2`` about twice that):

- the sample loyalty schema (tenants, members, rewards, redemptions, an ``events`` table of 3 M rows);
- ``points_ledger``, append-only, 6 M rows with three B-tree indexes, loaded with its indexes in place as
  production fills it (so its (member_id, created_at) index is as full as random inserts leave one);
- four hot tables that a week of API traffic churns: ``member_sessions`` (60 % expired and replaced,
  ``last_seen`` touched), ``member_carts`` (every row updated through an indexed column),
  ``pending_points`` (a queue: 90 % processed and deleted), ``reward_stock`` (five decrements per row);
- 500 small, untouched archive tables.

The template database is built once (or reused with ``--cluster-dir``). Every round clones it twice
(``CREATE DATABASE ... STRATEGY FILE_COPY``), ANALYZEs the copy (statistics do not travel with a copy)
and applies the same week of churn, so both modes start from the same state:

1. copy S: the writer alone for ``--alone-s`` seconds, then the writer during smart maintenance;
2. copy G: the writer during the guide's `VACUUM ANALYZE; REINDEX DATABASE`.

The writer is one API-like connection: ledger and event inserts, balance, session and cart updates and a
ledger read, one statement every ``--pace-ms``, each timed. Per round it prints the writer's p99 alone
and during each mode, the time of each mode and what each did; at the end the ratios with their spread
over rounds (min / median / max of the per-round figures) and the longest single wait against
lock_timeout. Targets: smart <= 0.2 x the guide's time, writer p99 during smart <= 2 x alone, no
writer statement and no maintenance lock wait longer than lock_timeout.

Run (never in CI; other benchmarks measure on the same machine, hence the lock):
    flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/maintenance.py [--scale 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: devstack/ lives beside the package

from devstack.postgres_cluster import LocalPostgres  # noqa: E402
from devstack.sample_data import create_sample_schema  # noqa: E402
from loyalty_ops.lib.formatting import human_bytes  # noqa: E402
from loyalty_ops.lib.maintenance import stats as pgstats  # noqa: E402
from loyalty_ops.lib.maintenance.execute import ExecutionSettings, MaintenanceExecutor, connect  # noqa: E402
from loyalty_ops.lib.maintenance.plan import Thresholds, plan_maintenance  # noqa: E402

LOG = logging.getLogger("bench")
LOG.setLevel(logging.INFO)  # the executor's progress lines feed ObjectTimeline; only warnings are printed
LOG.propagate = False
_WARNINGS = logging.StreamHandler()
_WARNINGS.setLevel(logging.WARNING)
LOG.addHandler(_WARNINGS)
SLOW_S = 0.004  # a writer statement over 4 ms counts as slow in the per-object attribution
TEMPLATE = "bench_template"
READY_MARK = "bench_template_ready"  # a comment on the template database: built completely, with this shape

HOT_TABLES_SQL = """
CREATE TABLE points_ledger (
    id bigserial PRIMARY KEY, tenant_id int NOT NULL, member_id bigint NOT NULL, event_id bigint,
    delta int NOT NULL, balance_after bigint NOT NULL, reason text NOT NULL, created_at timestamptz NOT NULL
);
CREATE INDEX points_ledger_member_created_idx ON points_ledger (member_id, created_at);
CREATE INDEX points_ledger_created_idx ON points_ledger (created_at);
CREATE TABLE member_sessions (
    id bigserial PRIMARY KEY, member_id bigint NOT NULL, token text NOT NULL UNIQUE,
    last_seen timestamptz NOT NULL, expires_at timestamptz NOT NULL
);
CREATE INDEX member_sessions_member_idx ON member_sessions (member_id);
CREATE INDEX member_sessions_expires_idx ON member_sessions (expires_at);
CREATE TABLE member_carts (
    id bigserial PRIMARY KEY, member_id bigint NOT NULL, items jsonb NOT NULL, updated_at timestamptz NOT NULL
);
CREATE INDEX member_carts_member_idx ON member_carts (member_id);
CREATE INDEX member_carts_updated_idx ON member_carts (updated_at);
CREATE TABLE pending_points (
    id bigserial PRIMARY KEY, member_id bigint NOT NULL, points int NOT NULL, created_at timestamptz NOT NULL
);
CREATE INDEX pending_points_created_idx ON pending_points (created_at);
CREATE TABLE reward_stock (reward_id int PRIMARY KEY, stock int NOT NULL, updated_at timestamptz NOT NULL);
"""


def shape(scale: float) -> dict[str, int]:
    """Row counts at a scale (1.0: about 2.1 GB)."""
    return {
        "sample_scale": 30 * scale,
        "ledger": int(6_000_000 * scale),
        "sessions": int(400_000 * scale),
        "carts": int(200_000 * scale),
        "pending": int(200_000 * scale),
        "stock": int(20_000 * scale),
    }


def build_template(cluster: LocalPostgres, scale: float, small_tables: int) -> None:
    rows = shape(scale)
    mark = f"{READY_MARK} scale={scale} tables={small_tables}"
    with cluster.connect() as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (TEMPLATE,)
        ).fetchone()
        if row and row[0] == mark:
            print(f"  reusing the template database ({mark})")
            return
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    started = time.monotonic()
    with cluster.connect(TEMPLATE) as conn:
        create_sample_schema(conn, rows["sample_scale"], analyze=False)
        print(f"  sample schema at scale {rows['sample_scale']:g}: {time.monotonic() - started:.0f} s", flush=True)
        conn.execute(HOT_TABLES_SQL)
        step = 1_000_000  # in batches, so the build reports progress
        members = conn.execute("SELECT max(id) FROM members").fetchone()[0]
        for first in range(1, rows["ledger"] + 1, step):
            last = min(first + step - 1, rows["ledger"])
            conn.execute(
                "INSERT INTO points_ledger (tenant_id, member_id, event_id, delta, balance_after, reason, created_at) "
                "SELECT 1 + g %% 50, 1 + abs(hashint8(g)) %% %(members)s, g, (abs(hashint8(g * 3)) %% 900) - 100, "
                "abs(hashint8(g * 5)) %% 50000, (ARRAY['purchase','redemption','expiry','adjustment'])[1 + g %% 4], "
                "timestamptz '2024-01-01' + g * interval '5 seconds' "
                "FROM generate_series(%(first)s::bigint, %(last)s::bigint) g",
                {"members": members, "first": first, "last": last},
            )
            print(f"  points_ledger: {last:,} of {rows['ledger']:,} rows, {time.monotonic() - started:.0f} s", flush=True)
        conn.execute(
            "INSERT INTO member_sessions (member_id, token, last_seen, expires_at) "
            "SELECT 1 + g %% %s, md5('s' || g), now() - interval '1 day', now() + (g %% 30) * interval '1 day' "
            "FROM generate_series(1, %s) g",
            (members, rows["sessions"]),
        )
        conn.execute(
            "INSERT INTO member_carts (member_id, items, updated_at) "
            "SELECT 1 + g %% %s, jsonb_build_array(g %% 97, g %% 89), now() - interval '8 days' "
            "FROM generate_series(1, %s) g",
            (members, rows["carts"]),
        )
        conn.execute(
            "INSERT INTO pending_points (member_id, points, created_at) "
            "SELECT 1 + g %% %s, g %% 500, now() - interval '1 day' + g * interval '1 ms' FROM generate_series(1, %s) g",
            (members, rows["pending"] // 10),
        )
        conn.execute("INSERT INTO reward_stock SELECT g, 1000, now() FROM generate_series(1, %s) g", (rows["stock"],))
        for n in range(small_tables):
            table = sql.Identifier(f"archive_{n:03d}")
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, member_id bigint NOT NULL, note text)").format(table))
            conn.execute(sql.SQL("INSERT INTO {} SELECT g, g, md5(g::text) FROM generate_series(1, 200) g").format(table))
        conn.execute("VACUUM (ANALYZE, FREEZE)")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    with cluster.connect() as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(TEMPLATE), sql.Literal(mark)))
        conn.execute("CHECKPOINT")
    print(f"  template built in {time.monotonic() - started:.0f} s: {human_bytes(size)}", flush=True)


def week_of_churn(conn: psycopg.Connection, scale: float) -> None:
    """What a week of API traffic leaves on the hot tables (autovacuum off, so it stays for the run)."""
    rows = shape(scale)
    conn.execute("DELETE FROM member_sessions WHERE id % 10 < 6")
    conn.execute(
        "INSERT INTO member_sessions (member_id, token, last_seen, expires_at) "
        "SELECT member_id, md5('renewed' || id), now(), now() + interval '30 days' FROM member_sessions "
        "ORDER BY id LIMIT %s",
        (rows["sessions"] * 6 // 10,),
    )
    conn.execute("UPDATE member_sessions SET last_seen = now() WHERE id % 10 = 7")
    conn.execute("UPDATE member_carts SET updated_at = now(), items = items || '[1]'::jsonb")
    conn.execute(
        "INSERT INTO pending_points (member_id, points, created_at) "
        "SELECT 1 + g %% 1000, g %% 500, now() + g * interval '1 ms' FROM generate_series(1, %s) g",
        (rows["pending"],),
    )
    conn.execute("DELETE FROM pending_points WHERE id % 10 <> 0")
    for _ in range(5):
        conn.execute("UPDATE reward_stock SET stock = stock - 1, updated_at = now()")


def fresh_copy(cluster: LocalPostgres, scale: float) -> str:
    """A copy of the template with current statistics and a week of churn on the hot tables."""
    name = f"bench_{uuid.uuid4().hex[:6]}"
    with cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(name), sql.Identifier(TEMPLATE)))
    with cluster.connect(name) as conn:
        conn.execute("ANALYZE")  # what autovacuum would have left: statistics current before the week's churn
        week_of_churn(conn, scale)
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
        conn.execute("CHECKPOINT")
    return name


def database_size(cluster: LocalPostgres, db: str) -> int:
    with cluster.connect(db) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


@dataclass
class ModeRun:
    seconds: float
    did: str
    reclaimed: int
    longest_lock_wait_s: float = 0.0
    extra: dict = field(default_factory=dict)


def guide_maintenance(cluster: LocalPostgres, db: str) -> ModeRun:
    before = database_size(cluster, db)
    with cluster.connect(db) as conn:
        tables, indexes = conn.execute(
            "SELECT (SELECT count(*) FROM pg_class WHERE relkind IN ('r', 'm', 't')), "
            "(SELECT count(*) FROM pg_class WHERE relkind = 'i')"
        ).fetchone()
        started = time.monotonic()
        conn.execute("VACUUM ANALYZE")
        vacuum_s = time.monotonic() - started
        conn.execute(sql.SQL("REINDEX DATABASE {}").format(sql.Identifier(db)))
        seconds = time.monotonic() - started
    reclaimed = before - database_size(cluster, db)
    return ModeRun(seconds, f"VACUUM ANALYZE of {tables} relations ({vacuum_s:.1f} s), REINDEX of {indexes} indexes "
                   f"({seconds - vacuum_s:.1f} s)", reclaimed)


class ObjectTimeline(logging.Handler):
    """When each object of a smart run ended (from the executor's own "[n/N] action name: done" lines), so a
    slow writer statement can be put down to the object being worked on at the time."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.ends: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("[") and ": " in msg:
            self.ends.append((time.monotonic(), msg.split("] ", 1)[1].split(":", 1)[0]))

    def blame(self, starts: list[float], began: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in starts:
            what = "after the last object" if t >= (self.ends[-1][0] if self.ends else began) else "planning"
            previous = began
            for end, name in self.ends:
                if previous <= t < end:
                    what = name
                    break
                previous = end
            counts[what] = counts.get(what, 0) + 1
        return counts


def smart_maintenance(cluster: LocalPostgres, db: str, settings: ExecutionSettings) -> ModeRun:
    before = database_size(cluster, db)
    timeline = ObjectTimeline()
    LOG.addHandler(timeline)
    started = time.monotonic()
    with connect(cluster.spec(db)) as conn:
        tables, indexes = pgstats.read_table_stats(conn), pgstats.read_index_stats(conn)
        plan = plan_maintenance(tables, indexes, Thresholds(), pgstats.server_now(conn))
        planned = time.monotonic() - started
        acting = time.monotonic()
        report = MaintenanceExecutor(conn, settings, LOG, spec=cluster.spec(db)).execute_plan(plan)
    seconds = time.monotonic() - started
    LOG.removeHandler(timeline)
    reclaimed = before - database_size(cluster, db)
    slowest = sorted(report.items, key=lambda i: -i.duration_s)[:3]
    did = (f"plan {planned:.2f} s; {report.tables_vacuumed} of {plan.tables_considered} tables vacuumed, "
           f"{report.indexes_reindexed} of {plan.indexes_considered} indexes rebuilt, {len(report.skipped)} skipped, "
           f"{len(report.failed)} failed; slowest: "
           + ", ".join(f"{i.action} {i.name} {i.duration_s:.1f} s" for i in slowest))
    return ModeRun(seconds, did, reclaimed, report.longest_wait_s,
                   {"planned": [f"{i.action} {i.name} ({'+'.join(i.rules)})" for i in plan.items],
                    "timeline": timeline, "acting": acting})


class ApiWriter:
    """One API-like connection: a statement every ``pace_s``, each timed (the latency the API would see)."""

    KINDS = ("ledger insert", "event insert", "balance update", "session touch", "cart update", "ledger read")

    def __init__(self, cluster: LocalPostgres, db: str, pace_s: float):
        self.conn = cluster.connect(db)
        self.pace_s = pace_s
        self.members = self.conn.execute("SELECT max(id) FROM members").fetchone()[0]
        self.sessions = self.conn.execute("SELECT max(id) FROM member_sessions").fetchone()[0]
        self.carts = self.conn.execute("SELECT max(id) FROM member_carts").fetchone()[0]
        self.latencies: list[float] = []
        self.starts: list[float] = []  # when each timed statement started (monotonic)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def _statement(self, n: int) -> None:
        member = (n * 104729) % self.members + 1
        kind = n % len(self.KINDS)
        if kind == 0:
            self.conn.execute(
                "INSERT INTO points_ledger (tenant_id, member_id, delta, balance_after, reason, created_at) "
                "VALUES (1, %s, 10, 100, 'purchase', now())", (member,))
        elif kind == 1:
            self.conn.execute(
                "INSERT INTO events (tenant_id, member_id, kind, points, created_at) VALUES (1, %s, 'earn', 10, now())",
                (member,))
        elif kind == 2:
            self.conn.execute("UPDATE members SET points_balance = points_balance + 10 WHERE id = %s", (member,))
        elif kind == 3:
            self.conn.execute("UPDATE member_sessions SET last_seen = now() WHERE id = %s",
                              ((n * 7919) % self.sessions + 1,))
        elif kind == 4:
            self.conn.execute("UPDATE member_carts SET updated_at = now() WHERE id = %s", ((n * 15485863) % self.carts + 1,))
        else:
            self.conn.execute(
                "SELECT delta, created_at FROM points_ledger WHERE member_id = %s ORDER BY created_at DESC LIMIT 20",
                (member,)).fetchall()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._n += 1
            started = time.monotonic()
            try:
                self._statement(self._n)
            except psycopg.Error as exc:
                self.errors.append(str(exc).splitlines()[0])
            self.latencies.append(time.monotonic() - started)
            self.starts.append(started)
            time.sleep(self.pace_s)

    def measure(self, work=None, seconds: float = 0.0):
        """Latencies while ``work()`` runs (or for ``seconds``), and what ``work`` returned."""
        self.latencies, self.starts = [], []
        result = work() if work is not None else time.sleep(seconds)
        return list(self.latencies), result

    def slow_statements(self, threshold_s: float) -> list[float]:
        """Start times of the statements of the last measurement slower than ``threshold_s``."""
        return [t for t, lat in zip(list(self.starts), list(self.latencies)) if lat > threshold_s]

    def __enter__(self) -> "ApiWriter":
        self._thread.start()
        time.sleep(1.0)  # warm-up (connection, plans, caches), not measured
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"min {fmt.format(min(values))} / median {fmt.format(statistics.median(values))} / max {fmt.format(max(values))}"


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Round:
    alone_p99: float
    smart_p99: float
    guide_p99: float
    smart_s: float
    guide_s: float
    writer_longest_smart: float
    writer_longest_guide: float
    smart_lock_wait: float
    statements: tuple[int, int, int]
    latencies: tuple[list[float], list[float]] = ([], [])  # alone, during smart: pooled over rounds at the end
    variant: Optional[tuple[float, float, float]] = None  # --variant: p99, seconds, longest writer statement


def variant_run(cluster: LocalPostgres, args, settings: ExecutionSettings) -> tuple[float, float, float]:
    """Smart maintenance with the --variant settings on its own copy, under the same writer."""
    v_db = fresh_copy(cluster, args.scale)
    with ApiWriter(cluster, v_db, args.pace_ms / 1000) as writer:
        busy, run = writer.measure(lambda: smart_maintenance(cluster, v_db, settings))
        blame = run.extra["timeline"].blame(writer.slow_statements(SLOW_S), run.extra["acting"])
    cluster.drop_database(v_db)
    print(f"  variant {run.seconds:5.1f} s: {run.did}")
    print(f"  writer during variant {len(busy):5d} statements: p50 {1000 * statistics.median(busy):.2f} ms, "
          f"p99 {1000 * p99(busy):.2f} ms, max {1000 * max(busy):.1f} ms; over {1000 * SLOW_S:g} ms during: {blame}",
          flush=True)
    return p99(busy), run.seconds, max(busy)


def one_round(cluster: LocalPostgres, args, settings: ExecutionSettings, round_no: int,
              variant: Optional[ExecutionSettings] = None) -> Round:
    pace = args.pace_ms / 1000
    variant_result = None
    if variant is not None and round_no % 2 == 0:  # alternate the order, so a drift in load favours neither
        variant_result = variant_run(cluster, args, variant)
    s_db = fresh_copy(cluster, args.scale)
    print(f"round {round_no} ({load()}); copy {s_db}: {human_bytes(database_size(cluster, s_db))}", flush=True)
    with ApiWriter(cluster, s_db, pace) as writer:
        alone, _ = writer.measure(seconds=args.alone_s)
        busy, smart = writer.measure(lambda: smart_maintenance(cluster, s_db, settings))
        blame = smart.extra["timeline"].blame(writer.slow_statements(SLOW_S), smart.extra["acting"])
        errors = list(writer.errors)
    cluster.drop_database(s_db)
    if round_no == 1:
        print("  smart plan: " + ", ".join(smart.extra["planned"]))
    if variant is not None and variant_result is None:
        variant_result = variant_run(cluster, args, variant)
    g_db = fresh_copy(cluster, args.scale)
    with ApiWriter(cluster, g_db, pace) as writer:
        guide_w, guide = writer.measure(lambda: guide_maintenance(cluster, g_db))
        errors += writer.errors
    cluster.drop_database(g_db)
    r = Round(p99(alone), p99(busy), p99(guide_w), smart.seconds, guide.seconds, max(busy), max(guide_w),
              smart.longest_lock_wait_s, (len(alone), len(busy), len(guide_w)), (alone, busy), variant_result)
    print(f"  writer alone  {len(alone):5d} statements in {args.alone_s:g} s: p50 {1000 * statistics.median(alone):.2f} ms, "
          f"p99 {1000 * r.alone_p99:.2f} ms, max {1000 * max(alone):.1f} ms")
    print(f"  smart  {smart.seconds:6.1f} s, {human_bytes(smart.reclaimed)} reclaimed: {smart.did}")
    print(f"  writer during smart {len(busy):5d} statements: p50 {1000 * statistics.median(busy):.2f} ms, "
          f"p99 {1000 * r.smart_p99:.2f} ms ({r.smart_p99 / r.alone_p99:.2f}x alone), max {1000 * max(busy):.1f} ms; "
          f"over {1000 * SLOW_S:g} ms: {len([x for x in busy if x > SLOW_S])} (alone "
          f"{len([x for x in alone if x > SLOW_S])}), during: {blame}")
    print(f"  guide  {guide.seconds:6.1f} s, {human_bytes(guide.reclaimed)} reclaimed: {guide.did}")
    print(f"  writer during guide {len(guide_w):5d} statements: p50 {1000 * statistics.median(guide_w):.2f} ms, "
          f"p99 {1000 * r.guide_p99:.2f} ms, max {1000 * max(guide_w):.0f} ms")
    print(f"  time smart/guide {r.smart_s / r.guide_s:.3f}", flush=True)
    if errors:
        print(f"  writer errors: {errors[:3]}")
    return r


def summary(rounds: list[Round], lock_timeout_s: float) -> None:
    time_ratios = [r.smart_s / r.guide_s for r in rounds]
    p99_ratios = [r.smart_p99 / r.alone_p99 for r in rounds]
    ms = "{:.2f} ms"
    n = [sum(r.statements[i] for r in rounds) for i in range(3)]
    print()
    print(f"SUMMARY over {len(rounds)} rounds ({load()})")
    print(f"smart time (s):            {spread([r.smart_s for r in rounds])}")
    print(f"guide time (s):            {spread([r.guide_s for r in rounds])}")
    print(f"writer p99 alone:          {spread([1000 * r.alone_p99 for r in rounds], ms)}  ({n[0]} statements)")
    print(f"writer p99 during smart:   {spread([1000 * r.smart_p99 for r in rounds], ms)}  ({n[1]} statements)")
    print(f"writer p99 during guide:   {spread([1000 * r.guide_p99 for r in rounds], ms)}  ({n[2]} statements)")
    pooled_alone = [x for r in rounds for x in r.latencies[0]]
    pooled_smart = [x for r in rounds for x in r.latencies[1]]
    print(f"writer p99 pooled over rounds: alone {1000 * p99(pooled_alone):.2f} ms, during smart "
          f"{1000 * p99(pooled_smart):.2f} ms ({p99(pooled_smart) / p99(pooled_alone):.2f}x)")
    median_time, median_p99 = statistics.median(time_ratios), statistics.median(p99_ratios)
    longest = max(r.writer_longest_smart for r in rounds)
    lock_wait = max(r.smart_lock_wait for r in rounds)
    guide_longest = max(r.writer_longest_guide for r in rounds)
    print(f"RATIO time smart/guide:          median {median_time:.3f} ({spread(time_ratios, '{:.3f}')})  "
          f"target <= 0.2  {'OK' if median_time <= 0.2 else 'MISSED'}")
    print(f"RATIO writer p99 smart/alone:    median {median_p99:.2f} ({spread(p99_ratios)})  "
          f"target <= 2.0  {'OK' if median_p99 <= 2.0 else 'MISSED'}")
    print(f"longest writer statement during smart: {longest:.3f} s; longest maintenance lock wait {lock_wait:.3f} s; "
          f"lock_timeout {lock_timeout_s:g} s  {'OK' if max(longest, lock_wait) <= lock_timeout_s else 'MISSED'}")
    print(f"contrast: longest writer statement during the guide: {guide_longest:.2f} s")
    if all(r.variant for r in rounds):
        v_time = [r.variant[1] / r.guide_s for r in rounds]
        v_p99 = [r.variant[0] / r.alone_p99 for r in rounds]
        print(f"VARIANT time/guide:              median {statistics.median(v_time):.3f} ({spread(v_time, '{:.3f}')})")
        print(f"VARIANT writer p99/alone:        median {statistics.median(v_p99):.2f} ({spread(v_p99)}); "
              f"longest writer statement {max(r.variant[2] for r in rounds):.3f} s")


def setting_value(text: str, kind=int):
    """A session setting from the command line; 'server' (or 'none') leaves the server's own value."""
    return None if text.strip().lower() in ("server", "none") else kind(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="database size (1.0: about 2.1 GB)")
    parser.add_argument("--tables", type=int, default=500, help="small untouched tables")
    parser.add_argument("--rounds", type=int, default=5, help="fresh copies; ratios are medians over rounds")
    parser.add_argument("--alone-s", type=float, default=20.0, help="writer-alone window per round (s)")
    parser.add_argument("--pace-ms", type=float, default=2.0, help="writer's pause between statements (ms)")
    parser.add_argument("--lock-timeout", type=float, default=2.0, help="lock_timeout of smart maintenance (s)")
    parser.add_argument("--cluster-dir", type=Path, help="keep the cluster (and its template) here between runs")
    default = ExecutionSettings()
    parser.add_argument("--parallel-workers", type=setting_value, default=default.parallel_workers,
                        help="max_parallel_maintenance_workers of the maintenance session (default 0, as the job's; "
                        "'server': the server's own)")
    parser.add_argument("--cost-delay-ms", type=float, default=default.vacuum_cost_delay_ms,
                        help="vacuum_cost_delay of the maintenance session (ms)")
    parser.add_argument("--cost-limit", type=int, default=default.vacuum_cost_limit, help="vacuum_cost_limit")
    parser.add_argument("--work-mem-mb", type=int, default=default.maintenance_work_mem_mb,
                        help="maintenance_work_mem of the session (MB; 0: the server's)")
    parser.add_argument("--pause-s", type=float, default=default.pause_between_objects_s,
                        help="pause between objects (s)")
    parser.add_argument("--variant", default="",
                        help="also run smart maintenance with these settings on a copy of its own each round, "
                        "e.g. 'parallel_workers=server' (the server's parallel workers) or "
                        "'vacuum_cost_delay_ms=2,vacuum_cost_limit=400'")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = ExecutionSettings(
        lock_timeout_s=args.lock_timeout, retry_delay_s=1.0, parallel_workers=args.parallel_workers,
        vacuum_cost_delay_ms=args.cost_delay_ms, vacuum_cost_limit=args.cost_limit,
        maintenance_work_mem_mb=args.work_mem_mb, pause_between_objects_s=args.pause_s,
    )

    variant = None
    if args.variant:
        pairs = dict(item.split("=", 1) for item in args.variant.split(","))
        types = {f.name: f.type for f in dataclasses.fields(ExecutionSettings)}
        variant = dataclasses.replace(settings, **{
            k: setting_value(v, int if "int" in str(types[k]) else float) for k, v in pairs.items()})
        variant.validate()
    print(f"maintenance benchmark: {os.cpu_count()} cores, {load()}, {settings}", flush=True)
    if variant is not None:
        print(f"variant: {variant}", flush=True)
    cluster = LocalPostgres(password="bench-maintenance", base_dir=args.cluster_dir,
                            settings=("autovacuum=off", "max_connections=40", "shared_buffers=512MB"))
    cluster.start()
    try:
        build_template(cluster, args.scale, args.tables)
        rounds = [one_round(cluster, args, settings, n, variant) for n in range(1, args.rounds + 1)]
        summary(rounds, args.lock_timeout)
    finally:
        cluster.stop() if args.cluster_dir else cluster.destroy()


if __name__ == "__main__":
    main()

"""Benchmark: smart weekly maintenance against the guide's `VACUUM ANALYZE` + `REINDEX DATABASE`.

One throwaway cluster (autovacuum off so the state stays put), one sample loyalty database plus ~500 small
tables of which ~10 are bloated (60% of rows deleted, statistics current as autovacuum would leave them).
The database is built once as a template and cloned, so every measurement starts from the same state:

1. copy A: the guide's `VACUUM ANALYZE; REINDEX DATABASE` - time;
2. copy B: smart maintenance (plan + `VACUUM (ANALYZE, SKIP_LOCKED)` + `REINDEX INDEX CONCURRENTLY` of what
   the plan picks) - time; ratio smart / guide (target <= 0.2);
3. copy C: a paced writer (single-row UPDATEs on the bloated tables and members, INSERTs into events)
   alone, then the same writer during smart maintenance: p99 latency ratio (target <= 2x) and its longest
   single statement against lock_timeout;
4. copy D (contrast): the same writer during the guide's maintenance.

Run: .venv/bin/python benchmarks/maintenance.py [--scale 10] [--tables 500] [--bloated 10]
Never run in CI.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import sys
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: devstack/ lives beside the package

from devstack.postgres_cluster import LocalPostgres  # noqa: E402
from devstack.sample_data import create_sample_schema  # noqa: E402
from loyalty_ops.lib.maintenance import stats as pgstats  # noqa: E402
from loyalty_ops.lib.maintenance.execute import ExecutionSettings, MaintenanceExecutor, connect  # noqa: E402
from loyalty_ops.lib.formatting import human_bytes  # noqa: E402
from loyalty_ops.lib.maintenance.plan import Thresholds, plan_maintenance  # noqa: E402

LOG = logging.getLogger("bench")


def build_template(cluster: LocalPostgres, name: str, scale: float, tables: int, bloated: int, rows: int) -> None:
    cluster.create_database(name)
    with cluster.connect(name) as conn:
        t = time.monotonic()
        create_sample_schema(conn, scale)
        print(f"  sample schema at scale {scale}: {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        for n in range(tables):
            big = n < bloated
            table = f"bloated_{n:03d}" if big else f"archive_{n:03d}"
            count = rows if big else 200
            conn.execute(
                sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, member_id bigint NOT NULL, v int NOT NULL, note text)").format(
                    sql.Identifier(table)
                )
            )
            if big:
                conn.execute(sql.SQL("CREATE INDEX ON {} (member_id)").format(sql.Identifier(table)))
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT g, g %% 5000, 0, md5(g::text) FROM generate_series(1, %s) g").format(
                    sql.Identifier(table)
                ),
                (count,),
            )
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        print(f"  {tables} extra tables ({bloated} of them with {rows:,} rows): {time.monotonic() - t:.1f} s;"
              f" database {human_bytes(size)}")


def clone(cluster: LocalPostgres, template: str, bloated: int) -> str:
    """A copy of the clean template brought to the state the benchmark measures. pg_stat counters are kept
    per database and do not travel with a copy, so the copy is first ANALYZEd (as autovacuum would have
    left it), then 60% of the rows of each bloated table are deleted: the statistics then show exactly
    what production would - dead tuples and changes on the bloated tables, nothing on the others."""
    name = f"bench_{uuid.uuid4().hex[:6]}"
    with cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    with cluster.connect(name) as conn:
        conn.execute("ANALYZE")
        for n in range(bloated):
            conn.execute(sql.SQL("DELETE FROM {} WHERE id % 5 < 3").format(sql.Identifier(f"bloated_{n:03d}")))
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
        conn.execute("CHECKPOINT")
    return name


def guide_maintenance(cluster: LocalPostgres, db: str) -> float:
    with cluster.connect(db) as conn:
        started = time.monotonic()
        conn.execute("VACUUM ANALYZE")
        conn.execute(sql.SQL("REINDEX DATABASE {}").format(sql.Identifier(db)))
        return time.monotonic() - started


def smart_maintenance(cluster: LocalPostgres, db: str, lock_timeout_s: float):
    started = time.monotonic()
    with connect(cluster.spec(db)) as conn:
        tables, indexes = pgstats.read_table_stats(conn), pgstats.read_index_stats(conn)
        plan = plan_maintenance(tables, indexes, Thresholds(), pgstats.server_now(conn))
        planned = time.monotonic() - started
        executor = MaintenanceExecutor(
            conn, ExecutionSettings(lock_timeout_s=lock_timeout_s, retry_delay_s=1.0), LOG, spec=cluster.spec(db)
        )
        report = executor.execute_plan(plan)
    return time.monotonic() - started, planned, plan, report


class PacedWriter:
    """An API-like client: one single-row statement every ~5 ms, each one timed."""

    def __init__(self, cluster: LocalPostgres, db: str, bloated: int, rows: int):
        self.conn = cluster.connect(db)
        self.bloated, self.rows = bloated, rows
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        members = self.conn.execute("SELECT max(id) FROM members").fetchone()[0]
        while not self._stop.is_set():
            n += 1
            kind = n % 3
            started = time.monotonic()
            try:
                if kind == 0:
                    table = sql.Identifier(f"bloated_{n % self.bloated:03d}")
                    self.conn.execute(
                        sql.SQL("UPDATE {} SET v = v + 1 WHERE id = %s").format(table), ((n * 7919) % self.rows + 1,)
                    )
                elif kind == 1:
                    self.conn.execute(
                        "INSERT INTO events (tenant_id, member_id, kind, points, created_at) "
                        "VALUES (1, %s, 'earn', 10, now())",
                        ((n * 104729) % members + 1,),
                    )
                else:
                    self.conn.execute(
                        "UPDATE members SET points_balance = points_balance + 1 WHERE id = %s", ((n * 15485863) % members + 1,)
                    )
            except psycopg.Error as exc:
                self.errors.append(str(exc).splitlines()[0])
            self.latencies.append(time.monotonic() - started)
            time.sleep(0.005)

    def start(self) -> "PacedWriter":
        self._thread.start()
        return self

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        self.conn.close()
        return self.latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def writer_run(cluster, db, bloated, rows, work=None, idle_s=5.0):
    writer = PacedWriter(cluster, db, bloated, rows).start()
    time.sleep(0.5)  # connection warm-up, not measured
    writer.latencies.clear()
    result = None
    if work is None:
        time.sleep(idle_s)
    else:
        result = work()
    latencies = writer.stop()
    return latencies, writer.errors, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=10.0, help="sample database scale (1.0 ~ 20 MB)")
    parser.add_argument("--tables", type=int, default=500, help="extra tables")
    parser.add_argument("--bloated", type=int, default=10, help="how many of them are bloated")
    parser.add_argument("--rows", type=int, default=50_000, help="rows per bloated table before the deletes")
    parser.add_argument("--lock-timeout", type=float, default=2.0, help="lock_timeout for smart maintenance (s)")
    parser.add_argument("--rounds", type=int, default=4, help="fresh copies for the writer measurement")
    parser.add_argument("--no-contrast", action="store_true", help="skip the writer-during-guide measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with LocalPostgres(password=f"bench-{uuid.uuid4().hex}", settings=("autovacuum=off", "max_connections=40")) as cluster:
        print(f"building the template database (PostgreSQL on port {cluster.port})")
        build_template(cluster, "bench_template", args.scale, args.tables, args.bloated, args.rows)

        a = clone(cluster, "bench_template", args.bloated)
        guide_s = guide_maintenance(cluster, a)
        print(f"guide  (VACUUM ANALYZE + REINDEX DATABASE): {guide_s:.2f} s")

        b = clone(cluster, "bench_template", args.bloated)
        smart_s, plan_s, plan, report = smart_maintenance(cluster, b, args.lock_timeout)
        slowest = sorted(report.items, key=lambda i: -i.duration_s)[:4]
        print("  planned: " + ", ".join(f"{i.action} {i.qualified} ({'+'.join(i.rules)})" for i in plan.items))
        print("  slowest: " + ", ".join(f"{i.action} {i.qualified} {i.duration_s:.2f} s" for i in slowest))
        print(
            f"smart  (plan {plan_s:.3f} s + act): {smart_s:.2f} s - {report.tables_vacuumed} tables vacuumed, "
            f"{report.indexes_reindexed} indexes rebuilt of {plan.tables_considered} tables / "
            f"{plan.indexes_considered} indexes, {len(report.skipped)} skipped, {human_bytes(report.reclaimed_bytes)} reclaimed"
        )

        # The writer's tail latency on a shared 2-core machine is noisy and a smart run is short, so the
        # writer is measured over several fresh copies, alone and then during smart maintenance, pooled.
        base: list[float] = []
        during: list[float] = []
        errors: list[str] = []
        for round_no in range(1, args.rounds + 1):
            c = clone(cluster, "bench_template", args.bloated)
            alone, e1, _ = writer_run(cluster, c, args.bloated, args.rows, idle_s=2.0)
            busy, e2, (smart_c_s, _, _, report_c) = writer_run(
                cluster, c, args.bloated, args.rows, work=lambda: smart_maintenance(cluster, c, args.lock_timeout)
            )
            base += alone
            during += busy
            errors += e1 + e2
            print(f"  round {round_no}: alone p99 {1000 * p99(alone):.2f} ms; during smart ({smart_c_s:.2f} s, "
                  f"{report_c.tables_vacuumed} vacuumed, {report_c.indexes_reindexed} rebuilt, "
                  f"{len(report_c.skipped)} skipped) p99 {1000 * p99(busy):.2f} ms, max {1000 * max(busy):.1f} ms")
        print(f"writer alone:            {len(base)} statements, p50 {1000 * statistics.median(base):.2f} ms, "
              f"p99 {1000 * p99(base):.2f} ms, max {1000 * max(base):.1f} ms")
        print(f"writer during smart:     {len(during)} statements, p50 {1000 * statistics.median(during):.2f} ms, "
              f"p99 {1000 * p99(during):.2f} ms, max {1000 * max(during):.1f} ms")
        if errors:
            print(f"writer errors: {errors[:5]}")

        if not args.no_contrast:
            d = clone(cluster, "bench_template", args.bloated)
            guide_w, guide_errors, guide_d_s = writer_run(
                cluster, d, args.bloated, args.rows, work=lambda: guide_maintenance(cluster, d)
            )
            print(f"writer during guide:     {len(guide_w)} statements over {guide_d_s:.2f} s, p50 "
                  f"{1000 * statistics.median(guide_w):.2f} ms, p99 {1000 * p99(guide_w):.2f} ms, "
                  f"max {1000 * max(guide_w):.1f} ms (contrast)")

        time_ratio = smart_s / guide_s
        p99_ratio = p99(during) / p99(base)
        longest = max(during)
        print()
        print(f"RATIO time smart/guide:            {time_ratio:.3f}  (target <= 0.2)  {'OK' if time_ratio <= 0.2 else 'MISSED'}")
        print(f"RATIO writer p99 during/without:   {p99_ratio:.2f}   (target <= 2.0)  {'OK' if p99_ratio <= 2.0 else 'MISSED'}")
        print(f"writer longest statement:          {longest:.3f} s vs lock_timeout {args.lock_timeout:g} s  "
              f"{'OK' if longest <= args.lock_timeout else 'MISSED'}")


if __name__ == "__main__":
    main()

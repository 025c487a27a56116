"""Benchmark: the health and report jobs on a database with 500 tables and on one with 5,000.

Each table has a bigint primary key, a text and an integer column, 20 rows, and is analyzed, so the
bloat estimate, pgstattuple on the top N, the size queries and the morning report all have work to do.
Each job runs ``--repeat`` times per size in a fresh Dagster instance; the median is compared.
Target: the 5,000-table run takes at most 12 times as long as the 500-table one.

    .venv/bin/python benchmarks/reports.py [--small 500] [--large 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: devstack/ lives beside the package

from devstack.postgres_cluster import LocalPostgres  # noqa: E402
from loyalty_ops.definitions import defs  # noqa: E402
from loyalty_ops.defs.reports.resources import ApplicationEndpoints  # noqa: E402
from loyalty_ops.defs.resources import BackupStorage, PostgresTarget  # noqa: E402

TARGET_RATIO = 12.0
BATCH = 250  # tables per transaction (each holds locks on table, index and TOAST)


def build_database(cluster: LocalPostgres, name: str, tables: int) -> float:
    started = time.perf_counter()
    cluster.create_database(name, drop_existing=True)
    with cluster.connect(name) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
        for start in range(0, tables, BATCH):
            with conn.transaction():
                for i in range(start, min(start + BATCH, tables)):
                    table = sql.Identifier(f"ledger_{i:05d}")
                    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, name text NOT NULL, points integer)").format(table))
                    conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'member ' || g, g * 7 FROM generate_series(1, 20) g").format(table))
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def time_job(job_name: str, resources: dict, instance: dg.DagsterInstance) -> float:
    job = defs.resolve_job_def(job_name)
    started = time.perf_counter()
    result = job.execute_in_process(resources=resources, instance=instance, raise_on_error=True)
    elapsed = time.perf_counter() - started
    assert result.success
    return elapsed


def measure(cluster: LocalPostgres, database: str, repeat: int, backup_dir: Path) -> dict[str, float]:
    resources = {
        "postgres": PostgresTarget(host="127.0.0.1", port=cluster.port, user=cluster.user, password=cluster.password, database=database),
        "backup_storage": BackupStorage(backup_dir=str(backup_dir)),
        "application_endpoints": ApplicationEndpoints(),
    }
    times: dict[str, list[float]] = {"health": [], "reports": []}
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        for _ in range(repeat):
            times["health"].append(time_job("database_health_job", resources, instance))
            times["reports"].append(
                time_job("daily_reports_job", resources, instance) + time_job("morning_report_job", resources, instance)
            )
        bloat = instance.get_latest_materialization_event(dg.AssetKey("bloat_report")).asset_materialization.metadata
        estimate_s = bloat["estimate_s"].value
        exact_s = bloat["exact_s"].value
        relations = bloat["tables"].value + bloat["indexes"].value
    return {
        "health": statistics.median(times["health"]),
        "reports": statistics.median(times["reports"]),
        "estimate_s": estimate_s,
        "exact_s": exact_s,
        "relations": relations,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = {}
    with LocalPostgres(password=f"bench-{uuid.uuid4().hex}", settings=("max_locks_per_transaction=256",)) as cluster, \
            tempfile.TemporaryDirectory() as backup_dir:
        for tables in (args.small, args.large):
            name = f"bench_{tables}"
            build_s = build_database(cluster, name, tables)
            print(f"built {tables} tables in {build_s:.1f} s", flush=True)
            results[tables] = measure(cluster, name, args.repeat, Path(backup_dir))
            r = results[tables]
            print(
                f"{tables:>6} tables ({r['relations']} relations): health job {r['health']:.2f} s, "
                f"report jobs {r['reports']:.2f} s (bloat estimate {r['estimate_s']:.3f} s, pgstattuple top N {r['exact_s']:.3f} s)",
                flush=True,
            )
            cluster.drop_database(name)
    small, large = results[args.small], results[args.large]
    ok = True
    for job in ("health", "reports"):
        ratio = large[job] / small[job]
        verdict = "OK" if ratio <= TARGET_RATIO else "OVER TARGET"
        ok &= ratio <= TARGET_RATIO
        print(f"{job}: {args.large} tables / {args.small} tables = {ratio:.2f}x (target <= {TARGET_RATIO:g}x) {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

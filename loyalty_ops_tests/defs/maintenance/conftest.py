"""A small database shaped for maintenance tests: bloated tables (one with a quoted, spaced, mixed-case
schema, table and index name), an idle table, all with autovacuum off so only the job cleans them."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import psycopg
import pytest

from devstack.postgres_cluster import LocalPostgres
from loyalty_ops.definitions import defs
from loyalty_ops_tests.conftest import postgres_target

ODD_SCHEMA = 'Odd "Schema" x'
ODD_TABLE = 'Mixed Case "T" y'
ODD_INDEX = 'Idx "Q" z'
ODD_TABLE_SQL = '"Odd ""Schema"" x"."Mixed Case ""T"" y"'


def flush_stats(conn: psycopg.Connection) -> None:
    """Make this session's row counts visible in pg_stat_* now (PostgreSQL 15 flushes lazily)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def build_maintenance_schema(conn: psycopg.Connection, rows: int = 10_000) -> None:
    conn.execute("CREATE TABLE bloated (id int PRIMARY KEY, v text NOT NULL) WITH (autovacuum_enabled = false)")
    conn.execute("CREATE TABLE idle (id int PRIMARY KEY, v text NOT NULL) WITH (autovacuum_enabled = false)")
    conn.execute("CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL) WITH (autovacuum_enabled = false)")
    conn.execute('CREATE SCHEMA "Odd ""Schema"" x"')
    conn.execute(f"CREATE TABLE {ODD_TABLE_SQL} (id int NOT NULL, v text NOT NULL) WITH (autovacuum_enabled = false)")
    conn.execute(f'CREATE UNIQUE INDEX "Idx ""Q"" z" ON {ODD_TABLE_SQL} (id)')
    conn.execute(f"INSERT INTO bloated SELECT g, md5(g::text) FROM generate_series(1, {rows}) g")
    conn.execute(f"INSERT INTO idle SELECT g, md5(g::text) FROM generate_series(1, {rows // 10}) g")
    conn.execute(f"INSERT INTO hot SELECT g, 0 FROM generate_series(1, {rows}) g")
    conn.execute(f"INSERT INTO {ODD_TABLE_SQL} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g")
    flush_stats(conn)
    conn.execute("ANALYZE")
    conn.execute("DELETE FROM bloated WHERE id % 10 <> 0")
    conn.execute(f"DELETE FROM {ODD_TABLE_SQL} WHERE id % 10 <> 0")
    flush_stats(conn)


@pytest.fixture
def maint_db(pg_cluster: LocalPostgres, make_database) -> str:
    name = make_database("maint", sample_scale=None)
    with pg_cluster.connect(name) as conn:
        build_maintenance_schema(conn)
    return name


def run_maintenance(cluster: LocalPostgres, database: str, instance, config: Optional[dict] = None):
    job = defs.resolve_job_def("weekly_maintenance_job")
    return job.execute_in_process(
        run_config={"ops": {"weekly_maintenance": {"config": config or {}}}},
        resources={"postgres": postgres_target(cluster, database)},
        instance=instance,
        raise_on_error=False,
    )


def table_counters(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """(vacuum_count, n_dead_tup) per schema.table."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute("SELECT schemaname, relname, vacuum_count, n_dead_tup FROM pg_stat_user_tables").fetchall()
    return {f"{s}.{t}": (int(v), int(d)) for s, t, v, d in rows}


def invalid_indexes(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid"
    ).fetchall()
    return [r[0] for r in rows]


class Writer:
    """A loyalty-API-like writer: single-row UPDATEs and INSERTs in autocommit, each one timed."""

    def __init__(self, cluster: LocalPostgres, database: str, table: str = "hot", rows: int = 10_000):
        self.conn = cluster.connect(database)
        self.table, self.rows = table, rows
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            started = time.monotonic()
            try:
                if n % 4:
                    self.conn.execute(f"UPDATE {self.table} SET v = v + 1 WHERE id = %s", ((n * 7919) % self.rows + 1,))
                else:
                    self.conn.execute(f"INSERT INTO {self.table} VALUES (%s, 0)", (self.rows + n,))
            except psycopg.Error as exc:
                self.errors.append(str(exc))
            self.latencies.append(time.monotonic() - started)
            time.sleep(0.002)

    def __enter__(self) -> "Writer":
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.conn.close()


def release_after_leftover(
    cluster: LocalPostgres, database: str, prefix: str, release: Callable[[], None], *, extra_delay_s: float, timeout_s: float = 20
) -> threading.Thread:
    """Call ``release`` once an index named ``prefix...`` (a concurrent rebuild's copy) has appeared, plus a
    delay; or after ``timeout_s`` whatever happens, so a test never hangs."""

    def _watch() -> None:
        deadline = time.monotonic() + timeout_s
        with cluster.connect(database) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT 1 FROM pg_class WHERE relname LIKE %s", (prefix + "%",)).fetchone()
                if row:
                    time.sleep(extra_delay_s)
                    break
                time.sleep(0.02)
        release()

    thread = threading.Thread(target=_watch, daemon=True)
    thread.start()
    return thread


def make_leftover(cluster: LocalPostgres, database: str, table: str, index: str) -> str:
    """Make REINDEX INDEX CONCURRENTLY fail the way it does in production (a transaction still using the
    table when the rebuild wants to swap), leaving its invalid copy behind. Returns the copy's name."""
    reader = cluster.connect(database, autocommit=False)
    reader.execute(f"SELECT count(*) FROM {table}").fetchone()
    try:
        with cluster.connect(database) as conn:
            conn.execute("SET lock_timeout = '200ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute(f"REINDEX INDEX CONCURRENTLY {index}")
    finally:
        reader.rollback()
        reader.close()
    with cluster.connect(database) as conn:
        (leftover,) = invalid_indexes(conn)
    assert leftover.startswith(f"public.{index}_cc"), leftover
    return leftover

"""Settings of a maintenance run and its database connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import psycopg
from psycopg import sql

from loyalty_ops.lib.pg import session as pg_session
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.retry import RetryPolicy

FULL_REINDEX_CHOICES = ("database", "concurrently")


class MaintenanceError(RuntimeError):
    """Maintenance could not run at all (connection, bad settings); the message says what to fix."""


class Log(Protocol):
    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


@dataclass(frozen=True)
class ExecutionSettings:
    lock_timeout_s: float = 2.0
    statement_timeout_s: float = 1800.0
    max_attempts: int = 3
    retry_delay_s: float = 5.0
    vacuum_truncate: bool = True  # False: VACUUM (TRUNCATE false) never takes its brief ACCESS EXCLUSIVE
    progress_interval_s: float = 10.0
    full_reindex: str = "database"  # full mode: "database" (REINDEX DATABASE) or "concurrently"
    full_statement_timeout_s: float = 4 * 3600.0
    # How gently the run shares the server with the API (session settings, see ``session_settings``).
    # max_parallel_maintenance_workers of the session. 0 (one core per VACUUM or index build) by default: on a
    # quiet 2-core server the API's p99 rose 5-8x over its sub-millisecond baseline with the server's 2 parallel
    # workers and 1.8x with none, for a run 25 % longer (docs/maintenance.md, Performance). None: the server's.
    parallel_workers: Optional[int] = 0
    vacuum_cost_delay_ms: float = 0.0  # 0: VACUUM/ANALYZE unthrottled (PostgreSQL's default for a manual VACUUM)
    vacuum_cost_limit: int = 200
    maintenance_work_mem_mb: int = 0  # 0: the server's maintenance_work_mem
    pause_between_objects_s: float = 0.0  # smart and manual mode: a breather for the API between objects

    @property
    def retry_policy(self) -> RetryPolicy:
        """Objects (and full-mode statements) that could not get their locks: ``max_attempts`` tries in all,
        ``retry_delay_s`` apart."""
        return RetryPolicy(max_attempts=self.max_attempts, delay_s=self.retry_delay_s)

    def session_settings(self) -> dict[str, str]:
        """The server settings the maintenance session runs with (``SET`` for this session only)."""
        settings = {
            "vacuum_cost_delay": f"{self.vacuum_cost_delay_ms:g}ms",
            "vacuum_cost_limit": str(self.vacuum_cost_limit),
        }
        if self.parallel_workers is not None:
            settings["max_parallel_maintenance_workers"] = str(self.parallel_workers)
        if self.maintenance_work_mem_mb:
            settings["maintenance_work_mem"] = f"{self.maintenance_work_mem_mb}MB"
        return settings

    def validate(self) -> None:
        if self.lock_timeout_s <= 0:
            raise ValueError(f"lock_timeout_s must be > 0 (got {self.lock_timeout_s}); e.g. 2 for two seconds")
        if self.statement_timeout_s <= 0 or self.full_statement_timeout_s <= 0:
            raise ValueError("statement_timeout_s and full_statement_timeout_s must be > 0; e.g. 1800")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (got {self.max_attempts}); e.g. 3")
        if self.retry_delay_s < 0:
            raise ValueError(f"retry_delay_s must be >= 0 (got {self.retry_delay_s})")
        if self.parallel_workers is not None and not 0 <= self.parallel_workers <= 64:
            raise ValueError(f"parallel_workers must be between 0 and 64 (got {self.parallel_workers}); e.g. 0 for one core")
        if not 0 <= self.vacuum_cost_delay_ms <= 100:
            raise ValueError(
                f"vacuum_cost_delay_ms must be between 0 and 100 (got {self.vacuum_cost_delay_ms}); e.g. 2, "
                "autovacuum's default, or 0 for no throttling"
            )
        if not 1 <= self.vacuum_cost_limit <= 10000:
            raise ValueError(f"vacuum_cost_limit must be between 1 and 10000 (got {self.vacuum_cost_limit}); e.g. 200")
        if self.maintenance_work_mem_mb != 0 and not 1 <= self.maintenance_work_mem_mb <= 2 * 1024 * 1024:
            raise ValueError(
                f"maintenance_work_mem_mb must be 0 (the server's setting) or 1 to 2097152 "
                f"(got {self.maintenance_work_mem_mb}); e.g. 256"
            )
        if self.pause_between_objects_s < 0:
            raise ValueError(f"pause_between_objects_s must be >= 0 (got {self.pause_between_objects_s}); e.g. 1")
        if self.full_reindex not in FULL_REINDEX_CHOICES:
            raise ValueError(
                f"full_reindex must be 'database' (REINDEX DATABASE, blocks writes) or 'concurrently' "
                f"(REINDEX INDEX CONCURRENTLY of every index), got {self.full_reindex!r}"
            )


def apply_session_settings(conn: psycopg.Connection, settings: ExecutionSettings) -> None:
    """Put the run's gentleness settings on its session (they last as long as the connection)."""
    pairs = list(settings.session_settings().items())
    calls = sql.SQL(", ").join(sql.SQL("set_config(%s, %s, false)") for _ in pairs)
    conn.execute(sql.SQL("SELECT {}").format(calls), [x for pair in pairs for x in pair])


def connect(spec: ConnectionSpec) -> psycopg.Connection:
    """An autocommit connection for maintenance; a failure raises :class:`MaintenanceError`."""
    conn = pg_session.connect(spec, autocommit=True, error=MaintenanceError)
    conn.prepare_threshold = None  # utility statements (VACUUM, REINDEX) must never be prepared
    return conn

"""Settings of a maintenance run and its database connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

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

    @property
    def retry_policy(self) -> RetryPolicy:
        """Objects (and full-mode statements) that could not get their locks: ``max_attempts`` tries in all,
        ``retry_delay_s`` apart."""
        return RetryPolicy(max_attempts=self.max_attempts, delay_s=self.retry_delay_s)

    def validate(self) -> None:
        if self.lock_timeout_s <= 0:
            raise ValueError(f"lock_timeout_s must be > 0 (got {self.lock_timeout_s}); e.g. 2 for two seconds")
        if self.statement_timeout_s <= 0 or self.full_statement_timeout_s <= 0:
            raise ValueError("statement_timeout_s and full_statement_timeout_s must be > 0; e.g. 1800")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (got {self.max_attempts}); e.g. 3")
        if self.retry_delay_s < 0:
            raise ValueError(f"retry_delay_s must be >= 0 (got {self.retry_delay_s})")
        if self.full_reindex not in FULL_REINDEX_CHOICES:
            raise ValueError(
                f"full_reindex must be 'database' (REINDEX DATABASE, blocks writes) or 'concurrently' "
                f"(REINDEX INDEX CONCURRENTLY of every index), got {self.full_reindex!r}"
            )


def connect(spec: ConnectionSpec) -> psycopg.Connection:
    """An autocommit connection for maintenance; a failure raises :class:`MaintenanceError`."""
    conn = pg_session.connect(spec, autocommit=True, error=MaintenanceError)
    conn.prepare_threshold = None  # utility statements (VACUUM, REINDEX) must never be prepared
    return conn

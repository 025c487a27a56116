"""Opening a psycopg connection from a :class:`~loyalty_ops.lib.pg.connection.ConnectionSpec`: the one place
that does it, with the one message for a target that cannot be reached.

Callers put their own session settings (timeouts, ``prepare_threshold``) on top of the connection they get,
and choose the exception they raise (a backup raises ``BackupError``, maintenance ``MaintenanceError``), so
every domain keeps its own error type while the wording stays the same everywhere.
"""

from __future__ import annotations

from typing import Callable, Optional

import psycopg

from loyalty_ops.lib.pg.connection import ConnectionSpec

SETTINGS_TO_CHECK = (
    "Check PGHOST/PGPORT/PGUSER/PGPASSWORD (or PGPASSFILE) or LOYALTY_DATABASE_URL, PGSSLMODE/PGSSLROOTCERT "
    "when the server requires TLS, and that the server is running."
)


class DatabaseUnreachable(ConnectionError):
    """The driver could not connect; the message names the target (never the password) and what to check."""


def driver_error_detail(exc: BaseException) -> str:
    """The informative last line of a driver error (libpq puts the reason there), else the error's type."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def unreachable_message(spec: ConnectionSpec, exc: BaseException) -> str:
    """``cannot connect to postgresql://user@host:port/db: <reason>. Check ...``."""
    return f"cannot connect to {spec.redacted()}: {driver_error_detail(exc)}. {SETTINGS_TO_CHECK}"


def connect(
    spec: ConnectionSpec,
    *,
    autocommit: bool = True,
    connect_timeout: Optional[int] = None,
    error: Callable[[str], Exception] = DatabaseUnreachable,
) -> psycopg.Connection:
    """A connection with the spec's settings (the same the tools get). ``connect_timeout`` overrides the
    spec's for this connection only. A connection failure raises ``error(message)``."""
    kwargs = spec.psycopg_kwargs()
    if connect_timeout is not None:
        kwargs["connect_timeout"] = connect_timeout
    try:
        return psycopg.connect(**kwargs, autocommit=autocommit)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise error(unreachable_message(spec, exc)) from None

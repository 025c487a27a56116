"""Who made a maintenance statement wait: the sessions behind a lock timeout, named for the report.

A statement that gives up on ``lock_timeout`` only says "canceling statement due to lock timeout". What
on-call needs is *who* it waited for and *why*: a session holding a lock on the table, or - for
``REINDEX ... CONCURRENTLY``, which waits for every transaction older than its own snapshot through their
``virtualxid`` locks - one forgotten ``idle in transaction`` session that never touched the table at all.

:class:`BlockerWatch` asks PostgreSQL while the statement waits: a second connection polls
``pg_blocking_pids()`` of our backend and what it waits on (``pg_locks`` where not granted) and keeps every
blocking session it saw, with its state, transaction age and query (truncated). When the wait was too short
to be seen, :func:`older_transactions` names the transactions that were already open when the statement
started, the only ones it can have waited for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

import psycopg

QUERY_CHARS = 120

_BLOCKERS_SQL = """
SELECT a.pid, coalesce(a.state, ''), extract(epoch FROM clock_timestamp() - a.xact_start)::float8,
       coalesce(a.application_name, ''), coalesce(a.usename::text, ''), left(coalesce(a.query, ''), %s)
FROM unnest(pg_blocking_pids(%s)) AS b(pid) JOIN pg_stat_activity a ON a.pid = b.pid
ORDER BY a.xact_start NULLS LAST
"""
_WAITING_ON_SQL = """
SELECT l.locktype, l.mode, CASE WHEN l.relation IS NOT NULL THEN l.relation::regclass::text END
FROM pg_locks l WHERE l.pid = %s AND NOT l.granted LIMIT 1
"""
_OLDER_SQL = """
SELECT a.pid, coalesce(a.state, ''), extract(epoch FROM clock_timestamp() - a.xact_start)::float8,
       coalesce(a.application_name, ''), coalesce(a.usename::text, ''), left(coalesce(a.query, ''), %s)
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> ALL(%s) AND a.xact_start IS NOT NULL
  AND a.xact_start < to_timestamp(%s) AND a.backend_type = 'client backend'
ORDER BY a.xact_start
LIMIT 5
"""


@dataclass(frozen=True)
class Blocker:
    """A session that held up one of our statements."""

    pid: int
    state: str  # pg_stat_activity.state: "idle in transaction", "active", ...
    xact_age_s: Optional[float]  # how long its transaction had been open when seen
    application: str
    user: str
    query: str  # its current or last statement, truncated
    waited_on: str  # what our backend waited for: "virtualxid", "relation public.t (AccessExclusiveLock)", ...

    def describe(self) -> str:
        return describe_blocker(self.as_dict())

    def as_dict(self) -> dict:
        out = asdict(self)
        out["xact_age_s"] = None if self.xact_age_s is None else round(self.xact_age_s, 1)
        return out


def describe_blocker(b: dict) -> str:
    """One line for a Blocker (as its dict): pid, state, transaction age, application, user, query."""
    parts = [b.get("state") or "state unknown"]
    if b.get("xact_age_s") is not None:
        parts.append(f"transaction open {b['xact_age_s']:.0f} s")
    if b.get("application"):
        parts.append(f"app {b['application']!r}")
    if b.get("user"):
        parts.append(f"user {b['user']}")
    query = " ".join(str(b.get("query") or "").split())
    if query:
        parts.append(f"query {query[:QUERY_CHARS]!r}")
    return f"pid {b['pid']} ({', '.join(parts)})"


def _waited_on(locktype: Optional[str], mode: Optional[str], relation: Optional[str]) -> str:
    if locktype is None:
        return ""
    if locktype == "relation":
        return f"relation {relation} ({mode})"
    return locktype


def why_it_waited(waited_on: str) -> str:
    """Plain words for what a statement waited on."""
    if waited_on == "virtualxid":
        return ("it waited for older transactions to end (a concurrent REINDEX or DROP INDEX waits, through "
                "their virtualxid lock, for every transaction that started before it or uses its table)")
    if waited_on == "transactionid":
        return "it waited for another transaction to commit or roll back (a row or transaction lock)"
    if waited_on.startswith("relation "):
        return f"lock on {waited_on[len('relation '):]} not available"
    return f"it waited on a {waited_on} lock" if waited_on else "it waited on a lock"


def wait_reason(
    *, what: str, waited_s: float, lock_timeout_s: float, waited_on: str, on_relation: bool, holders: list[str],
    blockers: list[Blocker], guessed: bool, waited_for_lock: bool,
) -> str:
    """The skip reason of one attempt: what it waited on and who held it up. Only a wait on a lock of a
    relation says "not available"; a wait for older transactions says so, with their pid, age and query."""
    if waited_on and not on_relation:
        parts = [f"{why_it_waited(waited_on)}; gave up at lock_timeout {lock_timeout_s:g} s (waited {waited_s:.2f} s)"]
    elif on_relation or holders:
        parts = [f"{what} (waited {waited_s:.2f} s)"]
    else:
        parts = [f"waited {waited_s:.2f} s and gave up at lock_timeout {lock_timeout_s:g} s"]
    if holders:
        parts.append(f"held by {'; '.join(holders)}")
    if blockers and not guessed:
        parts.append("blocked by " + "; ".join(b.describe() for b in blockers))
    elif blockers:
        parts.append("transactions open since before it started (one of them held it up): "
                     + "; ".join(b.describe() for b in blockers))
    elif not holders and waited_for_lock:
        parts.append("no blocking session was seen (it had ended)")
    return " - ".join(parts)


class BlockerWatch:
    """Polls, from its own connection, who blocks ``backend_pid`` while a statement runs.

    Use ``with watch.during():`` around each statement; ``seen`` then holds the blockers of that statement
    (most recent sighting of each pid). The connection is opened on first use and kept."""

    def __init__(self, connect, backend_pid: int, poll_s: float):
        self._connect = connect  # () -> autocommit psycopg.Connection
        self.backend_pid = backend_pid
        self.poll_s = max(0.02, poll_s)
        self._conn: Optional[psycopg.Connection] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.seen: dict[int, Blocker] = {}
        self.started_at = time.time()
        self.error: Optional[str] = None

    @property
    def pid(self) -> Optional[int]:
        return self._conn.info.backend_pid if self._conn is not None else None

    def _poll_once(self) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
        rows = conn.execute(_BLOCKERS_SQL, (QUERY_CHARS, self.backend_pid)).fetchall()
        if not rows:
            return
        waited = conn.execute(_WAITING_ON_SQL, (self.backend_pid,)).fetchone()
        waited_on = _waited_on(*waited) if waited else ""
        for pid, state, age, app, user, query in rows:
            self.seen[pid] = Blocker(pid, state, age, app, user, query, waited_on or self._previous(pid))

    def _previous(self, pid: int) -> str:
        old = self.seen.get(pid)
        return old.waited_on if old else ""

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once()
            except Exception as exc:  # best effort: never disturb the statement itself
                self.error = f"{type(exc).__name__}: {exc}"
                self._close()
            self._stop.wait(self.poll_s)

    def during(self) -> "BlockerWatch":
        self.seen = {}
        self.started_at = time.time()
        self.error = None
        return self

    def __enter__(self) -> "BlockerWatch":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def close(self) -> None:
        self._close()


def older_transactions(conn: psycopg.Connection, started_at: float, exclude_pids: list[int]) -> list[Blocker]:
    """Transactions of this database that were already open when a statement started at ``started_at``
    (epoch seconds): the only ones a statement can have waited for, when the wait was too short to see."""
    rows = conn.execute(_OLDER_SQL, (QUERY_CHARS, exclude_pids, started_at)).fetchall()
    return [Blocker(pid, state, age, app, user, query, "") for pid, state, age, app, user, query in rows]

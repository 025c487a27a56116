"""Carrying out a maintenance plan without ever making production wait on us.

Every statement runs on one autocommit connection with ``lock_timeout`` and ``statement_timeout`` set just
before it, one object at a time:

- tables: ``VACUUM (ANALYZE, SKIP_LOCKED)``. SKIP_LOCKED skips a table it cannot lock *at once*, but
  VACUUM can still wait (on the table's indexes, on ANALYZE's sample of inheritance children), so
  ``lock_timeout`` is the real bound. Exact sizes are measured before and after with
  ``pg_table_size()``, which takes ACCESS SHARE: under ``lock_timeout`` that probe doubles as the test
  "is someone holding ACCESS EXCLUSIVE?", and the answer names who (pid, state, transaction age);
- indexes: ``REINDEX INDEX CONCURRENTLY`` (never a plain REINDEX outside full mode). When one fails
  (lock or statement timeout) it leaves an invalid ``_ccnew`` copy: that is dropped at once with
  ``DROP INDEX CONCURRENTLY`` and the rebuild is retried later;
- anything that could not get its lock is put back in the queue and retried after the rest, up to
  ``max_attempts`` times ``retry_delay_s`` apart; then it is reported as skipped, with why;
- a last sweep drops every invalid ``_ccnew``/``_ccold`` index still in the database.

Full mode does what the guide's script does - a database-wide VACUUM ANALYZE and ``REINDEX DATABASE``
(or a concurrent rebuild of every index) - still under ``lock_timeout``, with per-object sizes recorded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import psycopg
from psycopg import errors, sql

from loyalty_ops.lib.maintenance import stats as pgstats
from loyalty_ops.lib.maintenance.plan import (
    IndexStats,
    MaintenancePlan,
    PlanItem,
    Reason,
    _md,
    human_bytes,
)
from loyalty_ops.lib.pg.connection import ConnectionSpec

FULL_REINDEX_CHOICES = ("database", "concurrently")
MARKDOWN_ROWS = 200  # the UI table; every object is in the JSON metadata


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


@dataclass
class ItemResult:
    kind: str  # "table" | "index"
    action: str  # "vacuum" | "reindex" | "drop"
    schema: str
    name: str
    rules: list[str]
    table: Optional[str] = None
    status: str = "pending"  # "done" | "skipped" | "failed"
    reason: str = ""
    attempts: int = 0
    duration_s: float = 0.0
    longest_wait_s: float = 0.0  # the longest single attempt that ended on a lock
    dead_before: Optional[int] = None
    dead_after: Optional[int] = None
    bytes_before: Optional[int] = None
    bytes_after: Optional[int] = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def reclaimed_bytes(self) -> Optional[int]:
        if self.bytes_before is None or self.bytes_after is None:
            return None
        return self.bytes_before - self.bytes_after

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "action": self.action, "object": self.qualified, "table": self.table,
            "rules": self.rules, "status": self.status, "reason": self.reason, "attempts": self.attempts,
            "duration_s": round(self.duration_s, 3), "longest_wait_s": round(self.longest_wait_s, 3),
            "dead_before": self.dead_before, "dead_after": self.dead_after,
            "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
            "reclaimed_bytes": self.reclaimed_bytes,
        }


@dataclass
class MaintenanceReport:
    mode: str
    database: str
    items: list[ItemResult] = field(default_factory=list)
    duration_s: float = 0.0
    statements: list[tuple[str, float]] = field(default_factory=list)  # full mode: database-wide statements

    def _count(self, kind: str, action: str) -> int:
        return sum(1 for i in self.items if i.kind == kind and i.action == action and i.status == "done")

    @property
    def tables_vacuumed(self) -> int:
        return self._count("table", "vacuum")

    @property
    def indexes_reindexed(self) -> int:
        return self._count("index", "reindex")

    @property
    def leftovers_dropped(self) -> int:
        return self._count("index", "drop")

    @property
    def skipped(self) -> list[ItemResult]:
        return [i for i in self.items if i.status == "skipped"]

    @property
    def failed(self) -> list[ItemResult]:
        return [i for i in self.items if i.status == "failed"]

    @property
    def reclaimed_bytes(self) -> int:
        return int(sum(i.reclaimed_bytes for i in self.items if i.status == "done" and i.reclaimed_bytes is not None))

    @property
    def longest_wait_s(self) -> float:
        return max((i.longest_wait_s for i in self.items), default=0.0)

    def markdown(self) -> str:
        head = (
            f"**{self.mode}** maintenance of `{_md(self.database)}` in {self.duration_s:.1f} s: "
            f"{self.tables_vacuumed} tables vacuumed, {self.indexes_reindexed} indexes rebuilt, "
            f"{self.leftovers_dropped} leftover indexes dropped, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed; {human_bytes(self.reclaimed_bytes)} reclaimed."
        )
        lines = [head, ""]
        for text, secs in self.statements:
            lines.append(f"- `{_md(text)}`: {secs:.1f} s")
        if self.statements:
            lines.append("")
        if self.items:
            lines += [
                "| action | object | status | dead before | dead after | size before | size after | reclaimed | time (s) | tries | why |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            # Skipped and failed first: they are what an on-call engineer reads this for.
            order = {"failed": 0, "skipped": 1}
            shown = sorted(self.items, key=lambda i: order.get(i.status, 2))[:MARKDOWN_ROWS]
            for i in shown:
                fmt = lambda n: "" if n is None else f"{n:,}"  # noqa: E731
                lines.append(
                    f"| {i.action} | `{_md(i.qualified)}` | {i.status} | {fmt(i.dead_before)} | {fmt(i.dead_after)} | "
                    f"{human_bytes(i.bytes_before)} | {human_bytes(i.bytes_after)} | {human_bytes(i.reclaimed_bytes)} | "
                    f"{i.duration_s:.2f} | {i.attempts} | {_md(i.reason or ', '.join(i.rules))} |"
                )
            if len(self.items) > len(shown):
                lines += ["", f"... and {len(self.items) - len(shown)} more rows in the `objects` metadata."]
        return "\n".join(lines)


# Outcomes of one attempt.
DONE, RETRY, SKIP, FAILED = "done", "retry", "skip", "failed"
RETRYABLE = (errors.LockNotAvailable, errors.DeadlockDetected)


def connect(spec: ConnectionSpec) -> psycopg.Connection:
    try:
        conn = psycopg.connect(**spec.psycopg_kwargs(), autocommit=True)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise MaintenanceError(
            f"cannot connect to {spec.redacted()}: {detail}. Check PGHOST/PGPORT/PGUSER/PGPASSWORD or "
            "LOYALTY_DATABASE_URL, and that the server is running."
        ) from None
    conn.prepare_threshold = None  # utility statements (VACUUM, REINDEX) must never be prepared
    return conn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Heartbeat:
    """While one long statement runs, log every ``interval`` seconds that it is alive and how far it got
    (``pg_stat_progress_vacuum`` / ``pg_stat_progress_create_index``), from a second connection opened
    only if the statement outlives the first interval."""

    def __init__(self, label: str, backend_pid: int, spec: Optional[ConnectionSpec], log: Log, interval: float):
        self.label, self.pid, self.spec, self.log, self.interval = label, backend_pid, spec, log, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> "_Heartbeat":
        if self.spec is not None and self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _progress(self, conn: psycopg.Connection) -> str:
        parts = []
        row = conn.execute(
            "SELECT phase, heap_blks_scanned, heap_blks_total FROM pg_stat_progress_vacuum WHERE pid = %s",
            (self.pid,),
        ).fetchone()
        if row:
            phase, done, total = row
            parts.append(f"phase {phase}" + (f", {100 * done / total:.0f}% of heap scanned" if total else ""))
        row = conn.execute(
            "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
            "FROM pg_stat_progress_create_index WHERE pid = %s",
            (self.pid,),
        ).fetchone()
        if row:
            phase, bdone, btotal, tdone, ttotal = row
            pct = f", {100 * bdone / btotal:.0f}% of blocks" if btotal else (f", {100 * tdone / ttotal:.0f}% of tuples" if ttotal else "")
            parts.append(f"phase {phase}{pct}")
        row = conn.execute(
            "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (self.pid,)
        ).fetchone()
        if row and row[0] in ("Lock", "IO"):
            parts.append(f"waiting on {row[0]}/{row[1]}")
        return "".join(f"; {p}" for p in parts)

    def _run(self) -> None:
        conn = None
        try:
            while not self._stop.wait(self.interval):
                detail = ""
                try:
                    if conn is None:
                        conn = connect(self.spec)  # type: ignore[arg-type]
                    detail = self._progress(conn)
                except Exception:  # progress is best effort; never disturb the statement itself
                    detail = ""
                self.log.info(f"{self.label}: still running after {time.monotonic() - self._start:.1f} s{detail}")
        finally:
            if conn is not None:
                conn.close()


class MaintenanceExecutor:
    """Runs plans on one autocommit connection. ``spec`` (optional) lets long statements report progress."""

    def __init__(self, conn: psycopg.Connection, settings: ExecutionSettings, log: Log, spec: Optional[ConnectionSpec] = None):
        settings.validate()
        self.conn = conn
        self.settings = settings
        self.log = log
        self.spec = spec
        # (sqlstate, message) pairs: a Diagnostic is only readable inside the callback.
        self._notices: list[tuple[str, str]] = []
        conn.add_notice_handler(lambda d: self._notices.append((d.sqlstate or "", d.message_primary or "")))
        self.database = pgstats.current_database(conn)
        self.backend_pid = conn.info.backend_pid

    # -- statements ------------------------------------------------------------------------------

    def _timeouts(self, statement_timeout_s: Optional[float] = None) -> None:
        lock_ms = max(int(self.settings.lock_timeout_s * 1000), 1)
        stmt_ms = max(int((statement_timeout_s or self.settings.statement_timeout_s) * 1000), 1)
        self.conn.execute(
            "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
            (f"{lock_ms}ms", f"{stmt_ms}ms"),
        )

    def _run(self, statement: sql.Composable, label: str, statement_timeout_s: Optional[float] = None) -> list:
        self._timeouts(statement_timeout_s)
        self._notices.clear()
        with _Heartbeat(label, self.backend_pid, self.spec, self.log, self.settings.progress_interval_s):
            self.conn.execute(statement)
        return list(self._notices)

    def _probe(self, query: str, oid: int) -> Optional[int]:
        """An exact size (takes ACCESS SHARE, so it runs under lock_timeout). None: the object is gone."""
        self._timeouts(max(self.settings.lock_timeout_s * 2, 5.0))
        row = self.conn.execute(query, (oid,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _table_size(self, oid: int) -> Optional[int]:
        return self._probe("SELECT pg_table_size(%s::oid)", oid)

    def _index_size(self, oid: int) -> Optional[int]:
        return self._probe("SELECT pg_relation_size(%s::oid)", oid)

    def _locked_reason(self, relation_oid: Optional[int], what: str, waited: float) -> str:
        holders = []
        if relation_oid is not None:
            try:
                holders = pgstats.lock_holders(self.conn, relation_oid)
            except psycopg.Error:
                holders = []
        held = f" - held by {'; '.join(holders)}" if holders else ""
        return f"{what} (waited {waited:.2f} s){held}"

    def _timeout_text(self, what: str) -> str:
        return f"{what} not available within lock_timeout {self.settings.lock_timeout_s:g} s"

    # -- one attempt per object ------------------------------------------------------------------

    def _vacuum_table(self, item: PlanItem, result: ItemResult) -> str:
        started = time.monotonic()
        try:
            size = self._table_size(item.oid)
        except RETRYABLE:
            waited = time.monotonic() - started
            result.longest_wait_s = max(result.longest_wait_s, waited)
            result.reason = self._locked_reason(
                item.oid, self._timeout_text("table lock (ACCESS SHARE for the size probe)"), waited
            )
            return RETRY
        if size is None:
            result.reason = "table no longer exists"
            return SKIP
        if result.bytes_before is None:
            result.bytes_before = size
            result.dead_before = pgstats.dead_tuples(self.conn, item.oid)
        options = sql.SQL("ANALYZE, SKIP_LOCKED" if self.settings.vacuum_truncate else "ANALYZE, SKIP_LOCKED, TRUNCATE false")
        statement = sql.SQL("VACUUM ({}) {}").format(options, sql.Identifier(item.schema, item.name))
        run_started = time.monotonic()
        try:
            notices = self._run(statement, f"VACUUM {item.qualified}")
        except RETRYABLE as exc:
            waited = time.monotonic() - run_started
            result.longest_wait_s = max(result.longest_wait_s, waited)
            result.reason = self._locked_reason(item.oid, self._timeout_text(f"lock ({_first_line(exc)})"), waited)
            return RETRY
        skipped = [msg for state, msg in notices if state == "55P03" or "lock not available" in msg]
        if skipped:
            waited = time.monotonic() - run_started
            result.longest_wait_s = max(result.longest_wait_s, waited)
            result.reason = self._locked_reason(item.oid, f"SKIP_LOCKED: {skipped[0]}", waited)
            return RETRY
        refused = [msg for _, msg in notices if msg.startswith("skipping")]
        if refused:  # e.g. "skipping "x" --- only table or database owner can vacuum it": a warning, not an error
            result.reason = refused[0]
            return SKIP
        result.reason = ""
        try:
            result.bytes_after = self._table_size(item.oid)
        except RETRYABLE:  # locked right after our VACUUM: the work is done, only the number is missing
            result.reason = "size after not measured: table locked by another session"
        result.dead_after = pgstats.dead_tuples(self.conn, item.oid)
        return DONE

    def _leftovers_of(self, schema: str, table: Optional[str]) -> list[IndexStats]:
        return [i for i in pgstats.leftover_indexes(self.conn) if i.schema == schema and (table is None or i.table == table)]

    def _drop_index(self, schema: str, name: str) -> None:
        self._run(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, name)),
            f"DROP INDEX CONCURRENTLY {schema}.{name}",
        )

    def _clean_after_failed_reindex(self, item: PlanItem) -> None:
        for leftover in self._leftovers_of(item.schema, item.table):
            try:
                self._drop_index(leftover.schema, leftover.name)
                self.log.info(f"dropped {leftover.qualified}, left by the failed rebuild of {item.qualified}")
            except psycopg.Error as exc:
                self.log.warning(f"could not drop {leftover.qualified} yet ({_first_line(exc)}); the final sweep retries")

    def _reindex(self, item: PlanItem, result: ItemResult) -> str:
        oid = pgstats.index_oid(self.conn, item.schema, item.name)
        if oid is None:
            result.reason = "index no longer exists"
            return SKIP
        started = time.monotonic()
        try:
            size = self._index_size(oid)
        except RETRYABLE:
            waited = time.monotonic() - started
            result.longest_wait_s = max(result.longest_wait_s, waited)
            result.reason = self._locked_reason(
                oid, self._timeout_text("index lock (ACCESS SHARE for the size probe)"), waited
            )
            return RETRY
        if result.bytes_before is None:
            result.bytes_before = size
        statement = sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(item.schema, item.name))
        run_started = time.monotonic()
        try:
            self._run(statement, f"REINDEX INDEX CONCURRENTLY {item.qualified}")
        except (*RETRYABLE, errors.QueryCanceled) as exc:
            waited = time.monotonic() - run_started
            timed_out = isinstance(exc, errors.QueryCanceled)
            if not timed_out:
                result.longest_wait_s = max(result.longest_wait_s, waited)
            self._clean_after_failed_reindex(item)
            if timed_out:
                result.reason = f"statement_timeout {self.settings.statement_timeout_s:g} s reached; leftover dropped"
                return FAILED
            result.reason = self._locked_reason(oid, self._timeout_text(f"lock ({_first_line(exc)})"), waited)
            return RETRY
        new_oid = pgstats.index_oid(self.conn, item.schema, item.name)
        result.reason = ""
        try:
            result.bytes_after = self._index_size(new_oid) if new_oid is not None else None
        except RETRYABLE:
            result.reason = "size after not measured: index locked by another session"
        return DONE

    def _drop_leftover(self, item: PlanItem, result: ItemResult) -> str:
        oid = pgstats.index_oid(self.conn, item.schema, item.name)
        if oid is None:
            result.reason = "already gone"
            return SKIP
        started = time.monotonic()
        try:
            result.bytes_before = self._index_size(oid)
            self._drop_index(item.schema, item.name)
        except RETRYABLE as exc:
            waited = time.monotonic() - started
            result.longest_wait_s = max(result.longest_wait_s, waited)
            result.reason = self._locked_reason(oid, self._timeout_text(f"lock ({_first_line(exc)})"), waited)
            return RETRY
        result.bytes_after = 0
        result.reason = ""
        return DONE

    def _attempt(self, item: PlanItem, result: ItemResult) -> str:
        result.attempts += 1
        started = time.monotonic()
        try:
            if item.action == "vacuum":
                return self._vacuum_table(item, result)
            if item.action == "reindex":
                return self._reindex(item, result)
            return self._drop_leftover(item, result)
        except errors.QueryCanceled:
            result.reason = f"statement_timeout {self.settings.statement_timeout_s:g} s reached"
            return FAILED
        except (errors.UndefinedTable, errors.UndefinedObject):
            result.reason = f"{item.kind} no longer exists"
            return SKIP
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            result.reason = f"{type(exc).__name__}: {_first_line(exc)}"
            return FAILED
        finally:
            result.duration_s += time.monotonic() - started

    # -- plans -----------------------------------------------------------------------------------

    def run_items(self, items: list[PlanItem], report: MaintenanceReport) -> None:
        """Each item once, in order; items that could not get a lock go round again after the rest."""
        results = {}
        for item in items:
            results[id(item)] = ItemResult(
                kind=item.kind, action=item.action, schema=item.schema, name=item.name, rules=item.rules, table=item.table
            )
            report.items.append(results[id(item)])
        pending = list(items)
        total = len(pending)
        for attempt in range(1, self.settings.max_attempts + 1):
            if not pending:
                break
            if attempt > 1:
                self.log.info(
                    f"retry {attempt - 1} of {self.settings.max_attempts - 1}: {len(pending)} object(s) could not be "
                    f"locked; trying again in {self.settings.retry_delay_s:g} s"
                )
                time.sleep(self.settings.retry_delay_s)
            still = []
            for n, item in enumerate(pending, 1):
                result = results[id(item)]
                outcome = self._attempt(item, result)
                tag = f"[{n}/{len(pending)}{'' if attempt == 1 else f', retry {attempt - 1}'}]"
                if outcome == DONE:
                    result.status = "done"
                    extra = ""
                    if result.reclaimed_bytes is not None:
                        extra = f", {human_bytes(result.reclaimed_bytes)} reclaimed"
                    if result.dead_before is not None:
                        extra += f", dead tuples {result.dead_before:,} -> {result.dead_after if result.dead_after is not None else '?'}"
                    self.log.info(f"{tag} {item.action} {item.qualified}: done in {result.duration_s:.2f} s{extra}")
                elif outcome == RETRY:
                    still.append(item)
                    self.log.warning(f"{tag} {item.action} {item.qualified}: {result.reason}")
                elif outcome == SKIP:
                    result.status = "skipped"
                    self.log.info(f"{tag} {item.action} {item.qualified}: skipped, {result.reason}")
                else:
                    result.status = "failed"
                    self.log.warning(f"{tag} {item.action} {item.qualified}: FAILED, {result.reason}")
            pending = still
        for item in pending:
            result = results[id(item)]
            result.status = "skipped"
            result.reason = f"gave up after {result.attempts} attempts: {result.reason}"
            self.log.warning(f"{item.action} {item.qualified}: skipped, {result.reason}")
        if total:
            self.log.info(f"{total - len(pending)} of {total} objects handled")

    def sweep_leftovers(self, report: MaintenanceReport) -> None:
        """Drop every invalid ``_ccnew``/``_ccold`` index still present (ours or an earlier run's)."""
        leftovers = pgstats.leftover_indexes(self.conn)
        if not leftovers:
            return
        self.log.info(f"dropping {len(leftovers)} leftover index(es) of failed concurrent rebuilds")
        items = [
            PlanItem(kind="index", action="drop", oid=i.oid, schema=i.schema, name=i.name, table=i.table,
                     reasons=(Reason("leftover", "invalid index left by a failed REINDEX CONCURRENTLY"),))
            for i in leftovers
        ]
        self.run_items(items, report)

    def execute_plan(self, plan: MaintenancePlan) -> MaintenanceReport:
        """Smart or manual mode: leftovers first, then tables, then index rebuilds, then a final sweep."""
        started = time.monotonic()
        report = MaintenanceReport(mode=plan.mode, database=self.database)
        self.run_items(plan.drops + plan.tables + plan.reindexes, report)
        self.sweep_leftovers(report)
        report.duration_s = time.monotonic() - started
        return report

    def _database_statement(self, statement: sql.Composable, label: str) -> list:
        """A database-wide statement in full mode: retried on lock timeouts like everything else."""
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                return self._run(statement, label, self.settings.full_statement_timeout_s)
            except RETRYABLE as exc:
                if attempt == self.settings.max_attempts:
                    raise MaintenanceError(
                        f"{label} could not get its locks within lock_timeout {self.settings.lock_timeout_s:g} s "
                        f"after {attempt} attempts ({_first_line(exc)}); raise lock_timeout_s or run it in a quieter window"
                    ) from None
                self.log.warning(f"{label}: {_first_line(exc)}; retrying in {self.settings.retry_delay_s:g} s")
                time.sleep(self.settings.retry_delay_s)
        return []

    def execute_full(self) -> MaintenanceReport:
        """The guide's weekly script: VACUUM ANALYZE of the whole database, then REINDEX DATABASE (or a
        concurrent rebuild of every index), with before/after numbers for every table and index."""
        started = time.monotonic()
        report = MaintenanceReport(mode="full", database=self.database)
        # First, because a plain REINDEX would make an invalid _ccnew copy valid: a duplicate index.
        self.sweep_leftovers(report)
        tables = pgstats.read_table_stats(self.conn)
        indexes = [i for i in pgstats.read_index_stats(self.conn) if not i.is_leftover]
        dead = pgstats.dead_tuples_all(self.conn)
        table_results: dict[int, ItemResult] = {}
        for t in tables:
            r = ItemResult(kind="table", action="vacuum", schema=t.schema, name=t.name, rules=["full"], dead_before=dead.get(t.oid))
            try:
                r.bytes_before = self._table_size(t.oid)
            except RETRYABLE:
                r.reason = "size not measured: table locked"
            table_results[t.oid] = r
            report.items.append(r)

        vacuum_started = time.monotonic()
        notices = self._database_statement(sql.SQL("VACUUM (ANALYZE, SKIP_LOCKED)"), "VACUUM (ANALYZE, SKIP_LOCKED) database-wide")
        report.statements.append(("VACUUM (ANALYZE, SKIP_LOCKED)", time.monotonic() - vacuum_started))
        skipped_names = {}
        for state, text in notices:
            if state == "55P03" or "lock not available" in text:
                parts = text.split('"')
                if len(parts) >= 2:
                    skipped_names[parts[1]] = text
        dead = pgstats.dead_tuples_all(self.conn)
        for t in tables:
            r = table_results[t.oid]
            r.attempts = 1
            if t.name in skipped_names:
                r.status, r.reason = "skipped", f"SKIP_LOCKED: {skipped_names[t.name]}"
                continue
            try:
                r.bytes_after = self._table_size(t.oid)
                r.dead_after = dead.get(t.oid)
                r.status = "done"
            except RETRYABLE:
                r.status, r.reason = "done", "size after not measured: table locked"

        if self.settings.full_reindex == "database":
            index_results = []
            for i in indexes:
                r = ItemResult(kind="index", action="reindex", schema=i.schema, name=i.name, table=i.table, rules=["full"])
                try:
                    r.bytes_before = self._index_size(i.oid)
                except RETRYABLE:
                    r.reason = "size not measured: locked"
                index_results.append(r)
                report.items.append(r)
            reindex_started = time.monotonic()
            self._database_statement(
                sql.SQL("REINDEX DATABASE {}").format(sql.Identifier(self.database)), "REINDEX DATABASE"
            )
            report.statements.append((f"REINDEX DATABASE {self.database}", time.monotonic() - reindex_started))
            for r in index_results:
                r.attempts, r.status = 1, "done"
                oid = pgstats.index_oid(self.conn, r.schema, r.name)
                try:
                    r.bytes_after = self._index_size(oid) if oid is not None else None
                except RETRYABLE:
                    r.reason = "size after not measured: locked"
        else:
            items = [
                PlanItem(kind="index", action="reindex", oid=i.oid, schema=i.schema, name=i.name, table=i.table,
                         reasons=(Reason("full", "full mode rebuilds every index"),))
                for i in indexes
                if not i.is_exclusion
            ]
            for i in indexes:
                if i.is_exclusion:
                    report.items.append(
                        ItemResult(kind="index", action="reindex", schema=i.schema, name=i.name, table=i.table,
                                   rules=["full"], status="skipped",
                                   reason="exclusion-constraint index: PostgreSQL cannot rebuild it concurrently")
                    )
            self.run_items(items, report)
        self.sweep_leftovers(report)
        report.duration_s = time.monotonic() - started
        return report

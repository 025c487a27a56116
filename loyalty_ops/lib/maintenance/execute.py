"""Carrying out a maintenance plan without ever making production wait on us. (About 420 lines: the one
loop over the plan's objects and its retries; the session, the report, the heartbeat, the blocker watch and
the full mode are separate modules.)

Every statement runs on one autocommit connection with ``lock_timeout`` and ``statement_timeout`` set just
before it, one object at a time:

- tables: ``VACUUM (ANALYZE, SKIP_LOCKED)``. SKIP_LOCKED skips a table it cannot lock *at once*, but
  VACUUM can still wait (on the table's indexes, on ANALYZE's sample of inheritance children), so
  ``lock_timeout`` is the real bound. Exact sizes are measured before and after with
  ``pg_table_size()``, which takes ACCESS SHARE: under ``lock_timeout`` that probe doubles as the test
  "is someone holding ACCESS EXCLUSIVE?", and the answer names who (pid, state, transaction age);
- after the tables, the indexes of the tables just vacuumed are looked at again (VACUUM refreshed their
  ``relpages``; an index that grew since the last VACUUM/ANALYZE looked small to the plan);
- indexes: ``REINDEX INDEX CONCURRENTLY`` (never a plain REINDEX outside full mode). When one fails
  (lock or statement timeout) it leaves an invalid ``_ccnew`` copy: that is dropped at once with
  ``DROP INDEX CONCURRENTLY`` and the rebuild is retried later;
- anything that could not get its lock is put back in the queue and retried after the rest, up to
  ``max_attempts`` times ``retry_delay_s`` apart; then it is reported as skipped, with why;
- a last sweep drops every invalid ``_ccnew``/``_ccold`` index still in the database.

Whenever a statement gives up on ``lock_timeout``, the skip reason names what it waited on and the session
that held it up (``blockers``). Full mode (``full``) does what the guide's script does; the report and its
rendering are in ``report``, the progress heartbeat in ``heartbeat``.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import psycopg
from psycopg import errors, sql

from loyalty_ops.lib.maintenance import stats as pgstats
from loyalty_ops.lib.maintenance.blockers import Blocker, BlockerWatch, older_transactions, wait_reason
from loyalty_ops.lib.maintenance.heartbeat import Heartbeat
from loyalty_ops.lib.formatting import first_line, human_bytes
from loyalty_ops.lib.maintenance.plan import IndexStats, MaintenancePlan, PlanItem, Reason, rebuilds_after_vacuum
from loyalty_ops.lib.maintenance.report import ItemResult, MaintenanceReport
from loyalty_ops.lib.maintenance.session import (
    FULL_REINDEX_CHOICES,
    ExecutionSettings,
    Log,
    MaintenanceError,
    apply_session_settings,
    connect,
)
from loyalty_ops.lib.pg.connection import ConnectionSpec

__all__ = [
    "FULL_REINDEX_CHOICES", "ExecutionSettings", "ItemResult", "Log", "MaintenanceError", "MaintenanceExecutor",
    "MaintenanceReport", "connect",
]

# Outcomes of one attempt.
DONE, RETRY, SKIP, FAILED = "done", "retry", "skip", "failed"
RETRYABLE = (errors.LockNotAvailable, errors.DeadlockDetected)


class MaintenanceExecutor:
    """Runs plans on one autocommit connection. ``spec`` (optional) lets long statements report progress."""

    def __init__(self, conn: psycopg.Connection, settings: ExecutionSettings, log: Log, spec: Optional[ConnectionSpec] = None):
        settings.validate()
        self.conn = conn
        self.settings = settings
        self.log = log
        apply_session_settings(conn, settings)
        self.spec = spec
        # (sqlstate, message) pairs: a Diagnostic is only readable inside the callback.
        self._notices: list[tuple[str, str]] = []
        conn.add_notice_handler(lambda d: self._notices.append((d.sqlstate or "", d.message_primary or "")))
        self.database = pgstats.current_database(conn)
        self.backend_pid = conn.info.backend_pid
        # Who makes our statements wait, seen from a second connection while they wait.
        self.watch = BlockerWatch(self._second_connection, self.backend_pid, poll_s=min(0.25, settings.lock_timeout_s / 4))
        self._last_wait: tuple[list[Blocker], Optional[float]] = ([], None)  # the last statement that raised

    def _second_connection(self) -> psycopg.Connection:
        if self.spec is not None:
            return connect(self.spec)
        info = self.conn.info
        return psycopg.connect(info.dsn, password=info.password, autocommit=True)

    def close(self) -> None:
        """Close the watcher's connection (the main one belongs to the caller)."""
        self.watch.close()

    # -- statements ------------------------------------------------------------------------------

    def _timeouts(self, statement_timeout_s: Optional[float] = None) -> None:
        lock_ms = max(int(self.settings.lock_timeout_s * 1000), 1)
        stmt_ms = max(int((statement_timeout_s or self.settings.statement_timeout_s) * 1000), 1)
        self.conn.execute(
            "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
            (f"{lock_ms}ms", f"{stmt_ms}ms"),
        )

    def _watched(self, statement: Any, params: Any = None) -> psycopg.Cursor:
        """Execute under the blocker watch; when it raises, remember who it waited for."""
        try:
            with self.watch.during():
                return self.conn.execute(statement, params)
        except psycopg.Error:
            self._last_wait = (list(self.watch.seen.values()), self.watch.started_at)
            raise

    def _run(self, statement: sql.Composable, label: str, statement_timeout_s: Optional[float] = None) -> list:
        self._timeouts(statement_timeout_s)
        self._notices.clear()
        with Heartbeat(label, self.backend_pid, self.spec, self.log, self.settings.progress_interval_s, connect):
            self._watched(statement)
        return list(self._notices)

    def _probe(self, query: str, oid: int) -> Optional[int]:
        """An exact size (takes ACCESS SHARE, so it runs under lock_timeout). None: the object is gone."""
        self._timeouts(max(self.settings.lock_timeout_s * 2, 5.0))
        row = self._watched(query, (oid,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _table_size(self, oid: int) -> Optional[int]:
        return self._probe("SELECT pg_table_size(%s::oid)", oid)

    def _index_size(self, oid: int) -> Optional[int]:
        return self._probe("SELECT pg_relation_size(%s::oid)", oid)

    def _holders(self, relation_oid: Optional[int]) -> list[str]:
        if relation_oid is None:
            return []
        try:
            return pgstats.lock_holders(self.conn, relation_oid)
        except psycopg.Error:
            return []

    def _blockers_of_last_wait(self) -> tuple[list[Blocker], bool]:
        """Who the last failed statement waited for (seen while it waited), else the transactions that were
        open when it started (``True``: a guess)."""
        seen, started_at = self._last_wait
        if seen or started_at is None:
            return seen, False
        try:
            return older_transactions(self.conn, started_at, [self.backend_pid, self.watch.pid or 0]), True
        except psycopg.Error:
            return [], True

    def _locked_reason(
        self, relation_oid: Optional[int], what: str, waited: float, result: Optional[ItemResult] = None,
        *, waited_for_lock: bool = True,
    ) -> str:
        """Why an object could not be done: what it waited on and who held it up (pid, state, transaction
        age, query). ``waited_for_lock=False``: it did not wait (SKIP_LOCKED), only the lock holders count."""
        blockers, guessed = self._blockers_of_last_wait() if waited_for_lock else ([], False)
        waited_on = next((b.waited_on for b in blockers if b.waited_on), "")
        on_relation = not waited_for_lock or waited_on.startswith("relation ")
        holders = self._holders(relation_oid) if on_relation or not waited_on else []
        if result is not None and blockers:
            result.blocked_by = [b.as_dict() for b in blockers]
        return wait_reason(
            what=what, waited_s=waited, lock_timeout_s=self.settings.lock_timeout_s, waited_on=waited_on,
            on_relation=on_relation, holders=holders, blockers=blockers, guessed=guessed, waited_for_lock=waited_for_lock,
        )

    def _timeout_text(self, what: str) -> str:
        return f"{what} not available within lock_timeout {self.settings.lock_timeout_s:g} s"

    def _retry_after_wait(
        self, result: ItemResult, relation_oid: Optional[int], what: str, started: float, *, waited_for_lock: bool = True
    ) -> str:
        """A wait since ``started`` that ended without the lock: keep the longest wait and why (who held it
        up), and say the object goes round again."""
        waited = time.monotonic() - started
        result.longest_wait_s = max(result.longest_wait_s, waited)
        result.reason = self._locked_reason(relation_oid, what, waited, result, waited_for_lock=waited_for_lock)
        return RETRY

    # -- one attempt per object ------------------------------------------------------------------

    def _vacuum_table(self, item: PlanItem, result: ItemResult) -> str:
        started = time.monotonic()
        try:
            size = self._table_size(item.oid)
        except RETRYABLE:
            return self._retry_after_wait(
                result, item.oid, self._timeout_text("table lock (ACCESS SHARE for the size probe)"), started
            )
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
            return self._retry_after_wait(result, item.oid, self._timeout_text(f"table lock ({first_line(exc)})"), run_started)
        skipped = [msg for state, msg in notices if state == "55P03" or "lock not available" in msg]
        if skipped:
            return self._retry_after_wait(result, item.oid, f"SKIP_LOCKED: {skipped[0]}", run_started, waited_for_lock=False)
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
                self.log.warning(f"could not drop {leftover.qualified} yet ({first_line(exc)}); the final sweep retries")

    def _reindex(self, item: PlanItem, result: ItemResult) -> str:
        oid = pgstats.index_oid(self.conn, item.schema, item.name)
        if oid is None:
            result.reason = "index no longer exists"
            return SKIP
        started = time.monotonic()
        try:
            size = self._index_size(oid)
        except RETRYABLE:
            return self._retry_after_wait(
                result, oid, self._timeout_text("index lock (ACCESS SHARE for the size probe)"), started
            )
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
            result.reason = self._locked_reason(oid, self._timeout_text(f"lock ({first_line(exc)})"), waited, result)
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
            return self._retry_after_wait(result, oid, self._timeout_text(f"lock ({first_line(exc)})"), started)
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
            result.reason = f"{type(exc).__name__}: {first_line(exc)}"
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

        def announce_retry(attempt: int, delay_s: float) -> None:
            self.log.info(
                f"retry {attempt - 1} of {self.settings.max_attempts - 1}: {len(pending)} object(s) could not be "
                f"locked; trying again in {delay_s:g} s"
            )

        for attempt in self.settings.retry_policy.attempts(before_retry=announce_retry):
            still = []
            for n, item in enumerate(pending, 1):
                result = results[id(item)]
                if n > 1 and self.settings.pause_between_objects_s:
                    time.sleep(self.settings.pause_between_objects_s)  # let the API's queue drain between objects
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
            if not pending:
                break
        for item in pending:
            result = results[id(item)]
            result.status = "skipped"
            result.gave_up_waiting = True
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
        try:
            self.run_items(plan.drops + plan.tables, report)
            plan.items += self._rebuilds_after_vacuum(plan, report)
            self.run_items(plan.reindexes, report)
            self.sweep_leftovers(report)
        finally:
            self.close()
        report.duration_s = time.monotonic() - started
        return report

    def _rebuilds_after_vacuum(self, plan: MaintenancePlan, report: MaintenanceReport) -> list[PlanItem]:
        """Smart mode: indexes of the tables just vacuumed whose refreshed size now passes the bloat rule."""
        vacuumed = {(i.schema, i.name) for i in report.items if i.action == "vacuum" and i.status == "done"}
        if plan.mode != "smart" or plan.thresholds is None or not vacuumed:
            return []
        planned = {(i.schema, i.name) for i in plan.reindexes}
        extra = rebuilds_after_vacuum(pgstats.read_index_stats(self.conn), vacuumed, planned, plan.thresholds)
        if extra:
            self.log.info(f"after VACUUM, {len(extra)} more index(es) pass the bloat rule: "
                          + ", ".join(i.qualified for i in extra))
        return extra

    def _database_statement(self, statement: sql.Composable, label: str) -> list:
        """A database-wide statement in full mode: retried on lock timeouts like everything else."""
        policy = self.settings.retry_policy
        for attempt in policy.attempts():
            try:
                return self._run(statement, label, self.settings.full_statement_timeout_s)
            except RETRYABLE as exc:
                if policy.is_last(attempt):
                    blockers, guessed = self._blockers_of_last_wait()
                    who = "; ".join(b.describe() for b in blockers)
                    who = (f"; {'transactions open since before it' if guessed else 'blocked by'}: {who}" if who else "")
                    raise MaintenanceError(
                        f"{label} could not get its locks within lock_timeout {self.settings.lock_timeout_s:g} s "
                        f"after {attempt} attempts ({first_line(exc)}){who}; end that transaction, raise "
                        "lock_timeout_s or run it in a quieter window"
                    ) from None
                self.log.warning(f"{label}: {first_line(exc)}; retrying in {policy.delay_before(attempt + 1):g} s")
        return []

    def execute_full(self) -> MaintenanceReport:
        """The guide's weekly script: VACUUM ANALYZE of the whole database, then REINDEX DATABASE (or a
        concurrent rebuild of every index), with before/after numbers for every table and index."""
        from loyalty_ops.lib.maintenance.full import execute_full

        return execute_full(self)

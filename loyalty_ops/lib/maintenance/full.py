"""Full mode: the guide's weekly script (a database-wide VACUUM ANALYZE, then REINDEX DATABASE or a
concurrent rebuild of every index), still under ``lock_timeout``, with per-object sizes recorded."""

from __future__ import annotations

import time

from psycopg import sql

from loyalty_ops.lib.maintenance import stats as pgstats
from loyalty_ops.lib.maintenance.execute import RETRYABLE, MaintenanceExecutor
from loyalty_ops.lib.maintenance.plan import PlanItem, Reason
from loyalty_ops.lib.maintenance.report import ItemResult, MaintenanceReport


def execute_full(ex: MaintenanceExecutor) -> MaintenanceReport:
    """VACUUM ANALYZE of the whole database, then REINDEX DATABASE (or a concurrent rebuild of every
    index), with before/after numbers for every table and index."""
    try:
        return _execute_full(ex)
    finally:
        ex.close()


def _execute_full(ex: MaintenanceExecutor) -> MaintenanceReport:
    started = time.monotonic()
    report = MaintenanceReport(mode="full", database=ex.database)
    # First, because a plain REINDEX would make an invalid _ccnew copy valid: a duplicate index.
    ex.sweep_leftovers(report)
    tables = pgstats.read_table_stats(ex.conn)
    indexes = [i for i in pgstats.read_index_stats(ex.conn) if not i.is_leftover]
    dead = pgstats.dead_tuples_all(ex.conn)
    table_results: dict[int, ItemResult] = {}
    for t in tables:
        r = ItemResult(kind="table", action="vacuum", schema=t.schema, name=t.name, rules=["full"], dead_before=dead.get(t.oid))
        try:
            r.bytes_before = ex._table_size(t.oid)
        except RETRYABLE:
            r.reason = "size not measured: table locked"
        table_results[t.oid] = r
        report.items.append(r)

    vacuum_started = time.monotonic()
    notices = ex._database_statement(sql.SQL("VACUUM (ANALYZE, SKIP_LOCKED)"), "VACUUM (ANALYZE, SKIP_LOCKED) database-wide")
    report.statements.append(("VACUUM (ANALYZE, SKIP_LOCKED)", time.monotonic() - vacuum_started))
    skipped_names = {}
    for state, text in notices:
        if state == "55P03" or "lock not available" in text:
            parts = text.split('"')
            if len(parts) >= 2:
                skipped_names[parts[1]] = text
    dead = pgstats.dead_tuples_all(ex.conn)
    for t in tables:
        r = table_results[t.oid]
        r.attempts = 1
        if t.name in skipped_names:
            r.status, r.reason = "skipped", f"SKIP_LOCKED: {skipped_names[t.name]}"
            continue
        try:
            r.bytes_after = ex._table_size(t.oid)
            r.dead_after = dead.get(t.oid)
            r.status = "done"
        except RETRYABLE:
            r.status, r.reason = "done", "size after not measured: table locked"

    if ex.settings.full_reindex == "database":
        index_results = []
        for i in indexes:
            r = ItemResult(kind="index", action="reindex", schema=i.schema, name=i.name, table=i.table, rules=["full"])
            try:
                r.bytes_before = ex._index_size(i.oid)
            except RETRYABLE:
                r.reason = "size not measured: locked"
            index_results.append(r)
            report.items.append(r)
        reindex_started = time.monotonic()
        ex._database_statement(
            sql.SQL("REINDEX DATABASE {}").format(sql.Identifier(ex.database)), "REINDEX DATABASE"
        )
        report.statements.append((f"REINDEX DATABASE {ex.database}", time.monotonic() - reindex_started))
        for r in index_results:
            r.attempts, r.status = 1, "done"
            oid = pgstats.index_oid(ex.conn, r.schema, r.name)
            try:
                r.bytes_after = ex._index_size(oid) if oid is not None else None
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
        ex.run_items(items, report)
    ex.sweep_leftovers(report)
    report.duration_s = time.monotonic() - started
    return report

"""Markdown for the reports: what the Dagster UI shows on each materialization, and the morning report.

Pure functions of plain data, so the morning report can be rendered from stored metadata and tested
without Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from loyalty_ops.lib.formatting import human_bytes, markdown_table
from loyalty_ops.lib.reports import thresholds as th
from loyalty_ops.lib.reports.bloat import ExtensionState, RelationBloat
from loyalty_ops.lib.reports.sizes import Growth, SizeSnapshot
from loyalty_ops.lib.reports.thresholds import Verdict

LEVEL_BADGE = {th.OK: "OK", th.WARN: "WARN", th.ERROR: "ERROR"}


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _bytes(value: Optional[int]) -> str:
    return "n/a" if value is None else human_bytes(value)


def verdict_table(verdicts: dict[str, Verdict]) -> str:
    return markdown_table(["check", "level", "detail"], [(name, LEVEL_BADGE[v.level], v.message) for name, v in verdicts.items()])


def bloat_markdown(rows: list[RelationBloat], state: ExtensionState, *, limit: int = 25, duration_s: float = 0.0) -> str:
    tables = [r for r in rows if r.kind == "table"]
    indexes = [r for r in rows if r.kind == "index"]
    unknown = [r for r in rows if not r.estimable]
    total = sum(r.bloat_bytes or 0 for r in rows)
    parts = [
        f"**Estimated bloat: {human_bytes(total)}** across {len(tables)} tables and {len(indexes)} btree indexes "
        f"(statistics-based estimate in {duration_s:.2f} s; as good as the last ANALYZE).",
        f"Exact figures: {state.explain('pgstattuple')}.",
    ]
    for kind, items in (("Tables", tables), ("Indexes", indexes)):
        shown = [r for r in items if r.estimable][:limit]
        parts.append(f"### {kind} with the most estimated bloat")
        if not shown:
            parts.append("_none_")
            continue
        parts.append(
            markdown_table(
                ["relation", "size", "est. bloat", "est. %", "exact bloat", "exact %", "exact source"],
                [
                    (r.name if kind == "Tables" else f"{r.name} (on {r.table})", _bytes(r.real_bytes),
                     _bytes(r.bloat_bytes), _pct(r.bloat_pct), _bytes(r.exact_bloat_bytes), _pct(r.exact_bloat_pct),
                     r.exact_note or "-")
                    for r in shown
                ],
                "lrrrrrl",
            )
        )
    if unknown:
        parts.append(f"### Not estimated ({len(unknown)})")
        parts.append(markdown_table(["relation", "size", "why"], [(r.name, _bytes(r.real_bytes), r.note) for r in unknown[:limit]]))
    return "\n\n".join(parts)


def sizes_markdown(
    snapshot: SizeSnapshot, *, top_n: int, previous_database_bytes: Optional[int], previous_at: Optional[str],
    growth: list[Growth], dropped: list[str],
) -> str:
    if previous_database_bytes is None:
        change = "first report: no growth yet"
    else:
        delta = snapshot.database_bytes - previous_database_bytes
        sign = "+" if delta >= 0 else "-"
        change = f"{sign}{human_bytes(abs(delta))} since {previous_at}"
    parts = [f"**Database `{snapshot.database}`: {human_bytes(snapshot.database_bytes)}** ({change}); "
             f"{snapshot.table_count} tables."]
    for by, title in (("total_bytes", "total size"), ("table_bytes", "table (heap) size"), ("index_bytes", "index size")):
        parts.append(f"### Top {top_n} tables by {title}")
        parts.append(
            markdown_table(
                ["table", "total", "table", "indexes", "toast+other", "rows (est.)"],
                [(t.name, _bytes(t.total_bytes), _bytes(t.table_bytes), _bytes(t.index_bytes), _bytes(t.toast_bytes),
                  f"{t.estimated_rows:,}") for t in snapshot.top(by, top_n)],
                "lrrrrr",
            )
        )
    grown = [g for g in growth if g.delta_bytes][:top_n]
    if previous_database_bytes is not None:
        parts.append(f"### Growth since {previous_at}")
        if grown:
            parts.append(
                markdown_table(["table", "before", "now", "change", "change %"],
                      [(g.name, _bytes(g.previous_bytes), _bytes(g.current_bytes),
                        ("+" if (g.delta_bytes or 0) >= 0 else "-") + human_bytes(abs(g.delta_bytes or 0)),
                        _pct(g.delta_pct)) for g in grown], "lrrrr")
            )
        else:
            parts.append("_no table changed size_")
        new = [g.name for g in growth if g.previous_bytes is None]
        if new:
            parts.append("New tables: " + ", ".join(f"`{n}`" for n in new[:20]))
        if dropped:
            parts.append("Gone since then: " + ", ".join(f"`{n}`" for n in dropped[:20]))
    return "\n\n".join(parts)


def health_markdown(health, verdicts: dict[str, Verdict]) -> str:
    parts = [f"**{LEVEL_BADGE[th.worst(v.level for v in verdicts.values())]}** database health of `{health.target}`",
             verdict_table(verdicts)]
    if health.reachable:
        c = health.connections
        parts.append("### Connections (client backends)")
        parts.append(markdown_table(
            ["scope", "total", "active", "idle", "idle in transaction", "max_connections"],
            [("server", c["total"], c["active"], c["idle"], c["idle_in_transaction"], c["max_connections"]),
             ("this database", c["database_total"], c["database_active"], c["database_idle"], "", "")],
            "lrrrrr",
        ))
        parts.append(f"### Statements running longer than {health.long_query_seconds:g} s")
        if health.long_queries:
            parts.append(markdown_table(["pid", "user", "application", "state", "seconds", "query"],
                               [(q["pid"], q["usename"], q["application_name"], q["state"], q["seconds"], q["query"])
                                for q in health.long_queries], "rlllrl"))
        else:
            parts.append("_none_")
        parts.append("### Top statements by mean time (pg_stat_statements)")
        if health.statements_installed and health.top_statements:
            parts.append(markdown_table(["mean ms", "calls", "total ms", "rows", "query"],
                               [(s["mean_ms"], s["calls"], s["total_ms"], s["rows"], s["query"])
                                for s in health.top_statements], "rrrrl"))
        else:
            parts.append(f"_{health.statements_note or 'no statements recorded'}_")
        parts.append("### Transaction ID age")
        parts.append(markdown_table(["database", "age(datfrozenxid)"], [(k, f"{v:,}") for k, v in health.xid_ages.items()], "lr"))
        if health.replicas:
            parts.append("### Replicas")
            parts.append(markdown_table(["name", "client", "state", "sync", "replay lag s", "replay lag bytes"],
                               [(r["application_name"], r["client"], r["state"], r["sync_state"], r["replay_lag_s"],
                                 r["replay_lag_bytes"]) for r in health.replicas]))
    return "\n\n".join(parts)


def application_markdown(api: Optional[dict], redis_health, verdicts: dict[str, Verdict]) -> str:
    parts = [f"**{LEVEL_BADGE[th.worst(v.level for v in verdicts.values())]}** application health", verdict_table(verdicts)]
    if api:
        rows = []
        for path, r in api.items():
            rows.append((path, r.http_status or "-", r.status or "-", "" if r.latency_ms is None else f"{r.latency_ms:.0f}",
                         ", ".join(f"{k}={v.get('status')}" for k, v in r.checks.items()) or (r.error or "-")))
        parts += ["### API", markdown_table(["endpoint", "HTTP", "status", "latency ms", "sub-checks"], rows)]
    if redis_health is not None and redis_health.reachable:
        limit, basis = redis_health.memory_limit
        parts += ["### Redis", markdown_table(
            ["hit rate", "hits", "misses", "used memory", "limit", "evicted", "clients"],
            [(_pct(redis_health.hit_rate), redis_health.keyspace_hits, redis_health.keyspace_misses,
              _bytes(redis_health.used_memory), f"{_bytes(limit)} ({basis})", redis_health.evicted_keys,
              redis_health.connected_clients)],
        )]
    return "\n\n".join(parts)


# ---- the morning report ----


@dataclass
class CheckOutcome:
    asset: str
    name: str
    passed: bool
    severity: str  # "WARN" or "ERROR" when failed
    description: str = ""


LEFT_ALONE_SHOWN = 20


@dataclass
class MorningInputs:
    now: datetime
    database: str
    backup: Optional[dict] = None  # filename, at, bytes, verified, failed_checks, offsite
    maintenance: Optional[dict] = None  # at, metadata
    restore_drill: Optional[dict] = None  # at, metadata
    health_at: Optional[datetime] = None
    checks: list[CheckOutcome] = field(default_factory=list)
    bloat_at: Optional[datetime] = None
    bloated_tables: list[dict] = field(default_factory=list)
    sizes: Optional[dict] = None  # at, database_bytes, growth_bytes
    disk: Optional[dict] = None  # path, percent, used, free, total
    containers: Optional[dict] = None  # at, metadata, checks
    left_alone: list[str] = field(default_factory=list)  # names in the backup locations that are not backups

    @property
    def status(self) -> str:
        levels = [th.OK]
        for c in self.checks:
            if not c.passed:
                levels.append(th.ERROR if c.severity == "ERROR" else th.WARN)
        if self.backup is None or not self.backup.get("verified") or self.backup_age_h is None or self.backup_age_h > 26:
            levels.append(th.ERROR)
        if self.health_at is None:
            levels.append(th.WARN)
        return th.worst(levels)

    @property
    def backup_age_h(self) -> Optional[float]:
        if not self.backup:
            return None
        return round((self.now - self.backup["at"]).total_seconds() / 3600, 2)


def _ago(now: datetime, then: Optional[datetime]) -> str:
    if then is None:
        return "never"
    seconds = max((now - then).total_seconds(), 0)
    if seconds < 3600:
        text = f"{seconds / 60:.0f} min ago"
    elif seconds < 172800:
        text = f"{seconds / 3600:.1f} h ago"
    else:
        text = f"{seconds / 86400:.1f} days ago"
    return f"{then.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC, {text}"


def morning_markdown(m: MorningInputs) -> str:
    out = [f"# Morning report: {LEVEL_BADGE[m.status]}",
           f"Database `{m.database}`, {m.now.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC."]

    out.append("## 1. Last backup")
    if m.backup is None:
        out.append("**No backup has ever been taken** (asset `database_backup`).")
    else:
        b = m.backup
        verified = "verified (all integrity checks passed)" if b.get("verified") else (
            "**NOT verified**: " + (", ".join(b.get("failed_checks") or []) or "checks did not run"))
        off = b.get("offsite")
        offsite = (f"offsite copy {'verified' if off.get('verified') else '**not verified**'} at `{off.get('key')}`"
                   if off else "**no offsite copy** of this backup")
        age = m.backup_age_h
        stale = " **(older than 26 h)**" if age is not None and age > 26 else ""
        out.append(markdown_table(["file", "taken", "size", "integrity", "offsite"],
                         [(b.get("filename"), _ago(m.now, b["at"]) + stale, _bytes(b.get("bytes")), verified, offsite)]))
    if m.restore_drill:
        d = m.restore_drill["metadata"]
        out.append(f"Last restore drill: {'passed' if d.get('passed') else '**failed**'} on `{d.get('backup_filename')}`, "
                   f"RTO {d.get('rto_s', 'n/a')} s ({_ago(m.now, m.restore_drill['at'])}).")

    out.append("## 2. Last maintenance")
    if m.maintenance is None:
        out.append("Weekly maintenance **never ran** (asset `weekly_maintenance` has no materialization).")
    else:
        md = m.maintenance["metadata"]
        keys = ("mode", "tables_vacuumed", "indexes_reindexed", "skipped", "reclaimed_bytes", "duration_s")
        values = [(k, _bytes(md[k]) if k == "reclaimed_bytes" and isinstance(md.get(k), int) else md.get(k, "n/a"))
                  for k in keys]
        out.append(f"Ran {_ago(m.now, m.maintenance['at'])}: " + ", ".join(f"{k} {v}" for k, v in values) + ".")

    out.append("## 3. Health")
    if m.health_at is None:
        out.append("`database_health` has never run: no health status.")
    else:
        stale = " **(stale: older than 1 h)**" if (m.now - m.health_at).total_seconds() > 3600 else ""
        failing = [c for c in m.checks if not c.passed]
        out.append(f"Last health check {_ago(m.now, m.health_at)}{stale}: {len(m.checks) - len(failing)} of "
                   f"{len(m.checks)} checks pass.")
        if m.checks:
            out.append(markdown_table(["asset", "check", "result", "detail"],
                             [(c.asset, c.name, "pass" if c.passed else c.severity, c.description)
                              for c in sorted(m.checks, key=lambda c: (c.passed, c.asset, c.name))]))

    out.append("## 4. Most bloated tables")
    if m.bloat_at is None:
        out.append("`bloat_report` has never run.")
    elif not m.bloated_tables:
        out.append(f"No table bloat estimated ({_ago(m.now, m.bloat_at)}).")
    else:
        out.append(f"From `bloat_report`, {_ago(m.now, m.bloat_at)}:")
        out.append(markdown_table(["table", "size", "est. bloat", "est. %", "exact %"],
                         [(t["name"], _bytes(t.get("real_bytes")), _bytes(t.get("bloat_bytes")), _pct(t.get("bloat_pct")),
                           _pct(t.get("exact_bloat_pct"))) for t in m.bloated_tables[:5]], "lrrrr"))

    out.append("## 5. Disk")
    if m.disk:
        d = m.disk
        level = th.DISK_PERCENT.level(d["percent"])
        out.append(f"Backup volume ({d['path']}): **{d['percent']:.0f}% used** ({LEVEL_BADGE[level]}), "
                   f"{_bytes(d['free'])} free of {_bytes(d['total'])}.")
    if m.sizes:
        s = m.sizes
        growth = s.get("growth_bytes")
        grew = "" if growth is None else f", {'+' if growth >= 0 else '-'}{human_bytes(abs(growth))} since the report before"
        out.append(f"Database size {_bytes(s.get('database_bytes'))} ({_ago(m.now, s['at'])}{grew}).")

    if m.left_alone:
        shown = m.left_alone[:LEFT_ALONE_SHOWN]
        more = len(m.left_alone) - len(shown)
        out.append(f"Left alone: {len(m.left_alone)} name(s) in the backup locations are not backups of `{m.database}` "
                   "(impossible timestamp, another database, temporary or other files); restore, retention and the "
                   "drill never touch them:\n\n" + "\n".join(f"- {n}" for n in shown)
                   + (f"\n- ... and {more} more" if more > 0 else ""))

    if m.containers is not None:
        out.append("## 6. Containers")
        c = m.containers
        failing = [x for x in c.get("checks", []) if not x.passed]
        summary = ", ".join(f"{k} {v}" for k, v in list(c.get("metadata", {}).items())[:8])
        out.append(f"`container_health` {_ago(m.now, c['at'])}: "
                   + (f"{len(failing)} failing check(s): " + ", ".join(f"{x.name} ({x.severity})" for x in failing)
                      if failing else "all checks pass")
                   + (f". {summary}" if summary else "."))
    return "\n\n".join(out)

"""Deciding what weekly maintenance should touch: pure functions over statistics already read.

The statistics come from ``pg_stat_user_tables``, ``pg_stat_user_indexes``, ``pg_class`` and ``pg_stats``
(see :mod:`loyalty_ops.lib.maintenance.stats`); nothing here talks to a database, so every rule is
unit-testable and the plan a run acts on is exactly the plan it shows.

Tables are picked when any rule fires (dead-tuple ratio, dead tuples, modifications since the last
ANALYZE, time since the last VACUUM/ANALYZE of a table that changed). Indexes are picked when their
statistics-based bloat estimate is over a threshold, when they are invalid, or - dropped rather than
rebuilt - when they are the invalid ``_ccnew``/``_ccold`` leftovers of a failed ``REINDEX CONCURRENTLY``.
A manual launch (names typed in the run config) is planned by :mod:`loyalty_ops.lib.maintenance.manual`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Optional, Sequence

from loyalty_ops.lib.formatting import human_bytes, markdown_literal

BLOCK_SIZE = 8192

# A failed REINDEX CONCURRENTLY leaves "<index>_ccnew" (the half-built copy) or "<index>_ccold" (the old
# index after the swap); more failures append digits: _ccnew1, _ccnew2, ...
LEFTOVER_INDEX_RE = re.compile(r"_cc(new|old)[0-9]*$")


@dataclass(frozen=True)
class Thresholds:
    """When a table or index needs work. The defaults suit a weekly run next to autovacuum."""

    dead_ratio: float = 0.10  # dead / (live + dead)
    min_dead_tuples: int = 1_000  # the ratio rule ignores tables with fewer dead tuples than this
    dead_tuples: int = 100_000  # absolute: this many dead tuples is worth a VACUUM whatever the ratio
    modified_ratio: float = 0.20  # modifications since ANALYZE / live rows (at least min_dead_tuples)
    max_days_since_maintenance: float = 7.0  # a table that changed but was not vacuumed/analyzed for this long
    index_bloat_ratio: float = 0.30  # estimated wasted share of an index
    min_index_bloat_bytes: int = 1024 * 1024  # ... and at least this many wasted bytes

    def validate(self) -> None:
        """Raise ValueError naming the field when a threshold makes no sense."""
        for name in ("dead_ratio", "modified_ratio", "index_bloat_ratio"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be a fraction in (0, 1], got {value}: e.g. {name}=0.2 for 20%")
        for name in ("min_dead_tuples", "dead_tuples", "min_index_bloat_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_days_since_maintenance <= 0:
            raise ValueError(
                f"max_days_since_maintenance must be > 0, got {self.max_days_since_maintenance}: e.g. 7 for a week"
            )


@dataclass(frozen=True)
class TableStats:
    oid: int
    schema: str
    name: str
    live_tuples: int
    dead_tuples: int
    mods_since_analyze: int
    last_vacuum: Optional[datetime] = None  # latest of manual and auto
    last_analyze: Optional[datetime] = None  # latest of manual and auto
    est_bytes: int = 0  # pg_class.relpages * block size (lock-free; exact after VACUUM/ANALYZE)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def dead_ratio(self) -> float:
        total = self.live_tuples + self.dead_tuples
        return self.dead_tuples / total if total else 0.0

    @property
    def last_maintenance(self) -> Optional[datetime]:
        stamps = [t for t in (self.last_vacuum, self.last_analyze) if t is not None]
        return max(stamps) if stamps else None


@dataclass(frozen=True)
class IndexStats:
    oid: int
    schema: str
    table: str
    name: str
    access_method: str
    valid: bool
    relpages: int
    reltuples: float  # -1: never analyzed/vacuumed
    fillfactor: int = 90
    columns: int = 1
    columns_with_stats: int = 0
    data_width: float = 0.0  # sum over columns of (1 - null_frac) * avg_width, from pg_stats
    max_null_frac: float = 0.0
    is_exclusion: bool = False
    table_live_tuples: Optional[int] = None  # pg_stat's live rows of the table: newer than reltuples after deletes
    scans: Optional[int] = None  # pg_stat_user_indexes.idx_scan: an unused index is worth a look, not a rebuild

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def est_bytes(self) -> int:
        return self.relpages * BLOCK_SIZE

    @property
    def is_leftover(self) -> bool:
        return not self.valid and bool(LEFTOVER_INDEX_RE.search(self.name))


@dataclass(frozen=True)
class BloatEstimate:
    expected_pages: int
    bloat_bytes: int
    bloat_ratio: float


def _align(n: float, maxalign: int) -> float:
    rem = n % maxalign
    return n if rem == 0 else n + maxalign - rem


def estimate_btree_bloat(index: IndexStats, *, block_size: int = BLOCK_SIZE, maxalign: int = 8) -> Optional[BloatEstimate]:
    """Statistics-based B-tree bloat estimate (the widely used ioguix formula): the pages the index would
    need for ``reltuples`` entries of the average width in ``pg_stats`` at its fillfactor, against the pages
    it has. ``None`` when it cannot be estimated (not a B-tree, no ANALYZE yet, empty)."""
    if index.access_method != "btree" or index.relpages <= 0 or index.reltuples < 0:
        return None
    if index.columns_with_stats < index.columns:
        return None
    # Entries of deleted rows only leave the index when VACUUM runs, and VACUUM never shrinks it: count
    # the rows the table still has (pg_stat is current; reltuples dates from the last VACUUM/ANALYZE).
    tuples = index.reltuples
    if index.table_live_tuples is not None:
        tuples = min(tuples, float(index.table_live_tuples))
    page_header, btree_opaque, item_id = 24, 16, 4
    tuple_header = 8 if index.max_null_frac == 0 else 8 + (32 + 8 - 1) // 8  # + null bitmap
    entry = _align(tuple_header, maxalign) + _align(index.data_width, maxalign)
    per_page = math.floor((block_size - btree_opaque - page_header) * index.fillfactor / (100 * (item_id + entry)))
    if per_page <= 0:
        return None
    expected = 1 + math.ceil(tuples / per_page)
    wasted_pages = max(index.relpages - expected, 0)
    return BloatEstimate(expected, wasted_pages * block_size, wasted_pages / index.relpages)


@dataclass(frozen=True)
class Reason:
    """Why a table or index was picked: the rule's name and the numbers that tripped it."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


@dataclass(frozen=True)
class PlanItem:
    kind: str  # "table" | "index"
    action: str  # "vacuum" | "reindex" | "drop"
    oid: int
    schema: str
    name: str
    reasons: tuple[Reason, ...]
    table: Optional[str] = None  # the index's table
    dead_tuples: Optional[int] = None
    dead_ratio: Optional[float] = None
    mods_since_analyze: Optional[int] = None
    last_maintenance: Optional[datetime] = None
    est_bytes: Optional[int] = None
    bloat_bytes: Optional[int] = None
    bloat_ratio: Optional[float] = None
    index_scans: Optional[int] = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def rules(self) -> list[str]:
        return [r.rule for r in self.reasons]


@dataclass
class MaintenancePlan:
    mode: str  # "smart" | "manual" | "full"
    items: list[PlanItem] = field(default_factory=list)
    tables_considered: int = 0
    indexes_considered: int = 0
    thresholds: Optional[Thresholds] = None
    notes: list[str] = field(default_factory=list)

    @property
    def tables(self) -> list[PlanItem]:
        return [i for i in self.items if i.kind == "table"]

    @property
    def reindexes(self) -> list[PlanItem]:
        return [i for i in self.items if i.kind == "index" and i.action == "reindex"]

    @property
    def drops(self) -> list[PlanItem]:
        return [i for i in self.items if i.kind == "index" and i.action == "drop"]


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def table_reasons(table: TableStats, t: Thresholds, now: datetime) -> list[Reason]:
    """Every rule that picks this table (empty: leave it alone)."""
    reasons = []
    if table.dead_tuples >= max(t.min_dead_tuples, 1) and table.dead_ratio >= t.dead_ratio:
        reasons.append(
            Reason("dead_ratio", f"{_pct(table.dead_ratio)} dead ({table.dead_tuples:,} tuples) >= {_pct(t.dead_ratio)}")
        )
    if table.dead_tuples >= max(t.dead_tuples, 1):
        reasons.append(Reason("dead_tuples", f"{table.dead_tuples:,} dead tuples >= {t.dead_tuples:,}"))
    mods_threshold = max(t.min_dead_tuples, 1, math.ceil(t.modified_ratio * table.live_tuples))
    if table.mods_since_analyze >= mods_threshold:
        reasons.append(
            Reason(
                "modified_since_analyze",
                f"{table.mods_since_analyze:,} rows changed since ANALYZE >= {mods_threshold:,} "
                f"({_pct(t.modified_ratio)} of {table.live_tuples:,} live)",
            )
        )
    changed = table.mods_since_analyze > 0 or table.dead_tuples > 0
    last = table.last_maintenance
    if changed:
        if last is None:
            reasons.append(Reason("never_maintained", "changed rows and never vacuumed or analyzed"))
        elif now - last >= timedelta(days=t.max_days_since_maintenance):
            days = (now - last).total_seconds() / 86400
            reasons.append(
                Reason(
                    "stale_maintenance",
                    f"changed rows, last vacuum/analyze {days:.1f} days ago >= {t.max_days_since_maintenance:g}",
                )
            )
    return reasons


def index_reasons(index: IndexStats, t: Thresholds) -> tuple[list[Reason], Optional[BloatEstimate]]:
    if index.is_leftover:
        return [Reason("leftover", "invalid index left by a failed REINDEX CONCURRENTLY: drop it")], None
    if not index.valid:
        return [Reason("invalid", "index is invalid (a failed CREATE/REINDEX CONCURRENTLY): rebuild it")], None
    estimate = estimate_btree_bloat(index)
    if estimate and estimate.bloat_ratio >= t.index_bloat_ratio and estimate.bloat_bytes >= t.min_index_bloat_bytes:
        return [
            Reason(
                "index_bloat",
                f"~{_pct(estimate.bloat_ratio)} bloat ({estimate.bloat_bytes:,} of {index.est_bytes:,} bytes) "
                f">= {_pct(t.index_bloat_ratio)}",
            )
        ], estimate
    return [], estimate


def plan_maintenance(
    tables: Sequence[TableStats], indexes: Sequence[IndexStats], thresholds: Thresholds, now: datetime
) -> MaintenancePlan:
    """The smart plan: tables any rule picks, then indexes to drop (leftovers) and to rebuild."""
    thresholds.validate()
    plan = MaintenancePlan(
        mode="smart", tables_considered=len(tables), indexes_considered=len(indexes), thresholds=thresholds
    )
    for table in sorted(tables, key=lambda x: (x.schema, x.name)):
        reasons = table_reasons(table, thresholds, now)
        if reasons:
            plan.items.append(table_item(table, reasons))
    drops, rebuilds = [], []
    for index in sorted(indexes, key=lambda x: (x.schema, x.table, x.name)):
        reasons, estimate = index_reasons(index, thresholds)
        if reasons:
            item = index_item(index, reasons, estimate)
            (drops if item.action == "drop" else rebuilds).append(item)
    plan.items += drops + rebuilds
    return plan


def rebuilds_after_vacuum(
    indexes: Sequence[IndexStats], vacuumed_tables: set[tuple[str, str]], planned: set[tuple[str, str]],
    thresholds: Thresholds,
) -> list[PlanItem]:
    """Indexes of the tables this run just vacuumed that the bloat rule picks now. ``relpages`` of an index
    is only refreshed by VACUUM/ANALYZE, so before the run an index that grew since then (updates of an
    indexed column) looked as small as it was; VACUUM refreshes it. ``planned``: (schema, name) of the
    indexes already in the plan."""
    items = []
    for index in sorted(indexes, key=lambda x: (x.schema, x.table, x.name)):
        if (index.schema, index.table) not in vacuumed_tables or (index.schema, index.name) in planned:
            continue
        if not index.valid:
            continue
        reasons, estimate = index_reasons(index, thresholds)
        if reasons and estimate is not None:
            after = Reason("index_bloat_after_vacuum", f"{reasons[0].detail}, seen once VACUUM refreshed its size")
            items.append(index_item(index, [after], estimate))
    return items


def table_item(table: TableStats, reasons: Iterable[Reason]) -> PlanItem:
    return PlanItem(
        kind="table",
        action="vacuum",
        oid=table.oid,
        schema=table.schema,
        name=table.name,
        reasons=tuple(reasons),
        dead_tuples=table.dead_tuples,
        dead_ratio=table.dead_ratio,
        mods_since_analyze=table.mods_since_analyze,
        last_maintenance=table.last_maintenance,
        est_bytes=table.est_bytes,
    )


def index_item(index: IndexStats, reasons: Iterable[Reason], estimate: Optional[BloatEstimate] = None) -> PlanItem:
    reasons = tuple(reasons)
    return PlanItem(
        kind="index",
        action="drop" if any(r.rule == "leftover" for r in reasons) else "reindex",
        oid=index.oid,
        schema=index.schema,
        name=index.name,
        table=index.table,
        reasons=reasons,
        est_bytes=index.est_bytes,
        bloat_bytes=estimate.bloat_bytes if estimate else None,
        bloat_ratio=estimate.bloat_ratio if estimate else None,
        index_scans=index.scans,
    )


# --- Rendering -----------------------------------------------------------------------------------


def plan_markdown(plan: MaintenancePlan, now: Optional[datetime] = None) -> str:
    """The plan as a markdown table: what, which action, which rule chose it, and the numbers."""
    head = (
        f"**{plan.mode} plan**: {len(plan.tables)} of {plan.tables_considered} tables to VACUUM (ANALYZE), "
        f"{len(plan.reindexes)} indexes to REINDEX CONCURRENTLY, {len(plan.drops)} leftover indexes to drop "
        f"(of {plan.indexes_considered} indexes)."
    )
    lines = [head, ""]
    if not plan.items:
        lines.append("Nothing is over a threshold: nothing to do.")
    else:
        lines += [
            "| action | object | chosen by | dead tuples | dead % | changed since analyze | last vacuum/analyze | size | est. bloat | index scans |",
            "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for item in plan.items:
            obj = f"`{markdown_literal(item.qualified)}`" + (f" on `{markdown_literal(item.table)}`" if item.table else "")
            rules = "<br>".join(markdown_literal(str(r)) for r in item.reasons)
            last = ""
            if item.kind == "table":
                last = item.last_maintenance.strftime("%Y-%m-%d %H:%M") if item.last_maintenance else "never"
            bloat = ""
            if item.bloat_bytes is not None:
                bloat = f"{human_bytes(item.bloat_bytes)} ({100 * (item.bloat_ratio or 0):.0f}%)"
            lines.append(
                f"| {item.action} | {obj} | {rules} | "
                f"{'' if item.dead_tuples is None else f'{item.dead_tuples:,}'} | "
                f"{'' if item.dead_ratio is None else f'{100 * item.dead_ratio:.0f}%'} | "
                f"{'' if item.mods_since_analyze is None else f'{item.mods_since_analyze:,}'} | "
                f"{last} | {human_bytes(item.est_bytes)} | {bloat} | "
                f"{'' if item.index_scans is None else f'{item.index_scans:,}'} |"
            )
    for note in plan.notes:
        lines += ["", f"- {markdown_literal(note)}"]
    return "\n".join(lines)

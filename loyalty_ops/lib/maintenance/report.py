"""What a maintenance run did, object by object, and its rendering for the Dagster UI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from loyalty_ops.lib.maintenance.blockers import describe_blocker
from loyalty_ops.lib.formatting import human_bytes, markdown_literal

MARKDOWN_ROWS = 200  # the UI table; every object is in the JSON metadata


def blockers_summary(items: list["ItemResult"]) -> str:
    """Who blocked these objects, most frequent first; or the last reason when no session was seen."""
    counts: dict[int, int] = {}
    latest: dict[int, dict[str, Any]] = {}
    for item in items:
        for b in item.blocked_by:
            if b["pid"] not in latest or (b.get("xact_age_s") or 0) >= (latest[b["pid"]].get("xact_age_s") or 0):
                latest[b["pid"]] = b
        for pid in {b["pid"] for b in item.blocked_by}:
            counts[pid] = counts.get(pid, 0) + 1
    if not counts:
        reasons = [i.reason for i in items if i.reason]
        return reasons[-1] if reasons else "no reason was recorded"
    ranked = sorted(counts, key=lambda pid: -counts[pid])
    text = "; ".join(f"blocked by {describe_blocker(latest[pid])} for {counts[pid]} of {len(items)}" for pid in ranked[:3])
    if len(ranked) > 3:
        text += f"; and {len(ranked) - 3} more session(s)"
    return text + ". End or wait out that transaction (pg_terminate_backend(pid) if it is abandoned) and relaunch"


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
    # The sessions that made it wait (Blocker.as_dict()), and whether it was given up for that reason.
    blocked_by: list[dict[str, Any]] = field(default_factory=list)
    gave_up_waiting: bool = False

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
            "reclaimed_bytes": self.reclaimed_bytes, "blocked_by": self.blocked_by,
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

    def shortfalls(self) -> list[str]:
        """What the run was meant to do and did none of: per action ("vacuum" of tables, "reindex" of
        indexes), "0 of N done" when N > 0, with who blocked it. Objects skipped for a reason that no
        retry changes (gone, not ours to vacuum, cannot be rebuilt concurrently) are not counted."""
        out = []
        for action, noun, verb in (("vacuum", "tables", "vacuumed"), ("reindex", "indexes", "rebuilt")):
            planned = [
                i for i in self.items
                if i.action == action and (i.status != "skipped" or i.gave_up_waiting)
            ]
            if not planned or any(i.status == "done" for i in planned):
                continue
            out.append(f"0 of {len(planned)} {noun} {verb}: {blockers_summary(planned)}")
        return out

    def markdown(self) -> str:
        head = (
            f"**{self.mode}** maintenance of `{markdown_literal(self.database)}` in {self.duration_s:.1f} s: "
            f"{self.tables_vacuumed} tables vacuumed, {self.indexes_reindexed} indexes rebuilt, "
            f"{self.leftovers_dropped} leftover indexes dropped, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed; {human_bytes(self.reclaimed_bytes)} reclaimed."
        )
        lines = [head, ""]
        for shortfall in self.shortfalls():
            lines += [f"**Nothing done:** {markdown_literal(shortfall)}", ""]
        for text, secs in self.statements:
            lines.append(f"- `{markdown_literal(text)}`: {secs:.1f} s")
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
                    f"| {i.action} | `{markdown_literal(i.qualified)}` | {i.status} | {fmt(i.dead_before)} | {fmt(i.dead_after)} | "
                    f"{human_bytes(i.bytes_before)} | {human_bytes(i.bytes_after)} | {human_bytes(i.reclaimed_bytes)} | "
                    f"{i.duration_s:.2f} | {i.attempts} | {markdown_literal(i.reason or ', '.join(i.rules))} |"
                )
            if len(self.items) > len(shown):
                lines += ["", f"... and {len(self.items) - len(shown)} more rows in the `objects` metadata."]
        return "\n".join(lines)

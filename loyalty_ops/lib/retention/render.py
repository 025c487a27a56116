"""A retention plan as markdown (the `plan` metadata) and as plain numbers for metadata."""

from __future__ import annotations

from datetime import timezone
from typing import Sequence

from loyalty_ops.lib.formatting import human_bytes, markdown_cell
from loyalty_ops.lib.retention.types import KEEP, LOCAL, LOGS, MARKDOWN_ROW_LIMIT, S3, RetentionPlan


def _limited(rows: Sequence[str], limit: int, what: str) -> list[str]:
    out = list(rows[:limit])
    if len(rows) > limit:
        out.append(f"\n_... and {len(rows) - limit:,} more {what} (see the counts above)._")
    return out


def _reverification_lines(plan: RetentionPlan, row_limit: int) -> list[str]:
    lines = ["", "## Re-verified before deleting", ""]
    if not plan.reverified:
        return lines + ["Not re-verified yet: this plan cannot be carried out as it is."]
    if not plan.reverification:
        return lines + ["Nothing to re-verify."]
    rows = ["| backup | copy | why checked | result | detail |", "|---|---|---|---|---|"]
    for request, result in plan.reverification:
        outcome = result.outcome if result else "not re-verified"
        rows.append(
            f"| `{request.filename}` | {request.location} `{markdown_cell(request.name)}` | {request.purpose} | {outcome} | "
            f"{markdown_cell(result.detail if result else '')} |"
        )
    return lines + _limited(rows, row_limit + 2, "copies")


def render_markdown(plan: RetentionPlan, row_limit: int = MARKDOWN_ROW_LIMIT) -> str:
    counts = plan.counts()
    lines = [f"# Retention plan for `{plan.database}`", ""]
    if plan.blocked:
        lines += [f"**BLOCKED: {plan.blocked}**", ""]
    else:
        lines += [f"**{len(plan.deletions):,} items to delete, {human_bytes(plan.bytes_to_free)} to free.**", ""]
    lines += [
        f"- Planned at {plan.now.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
        f"- Policy: {plan.policy.describe()}",
        f"- Offsite copy: {'s3 prefix `' + plan.prefix + '`' if plan.offsite_configured else 'not configured'}",
        f"- Logs: {'configured' if plan.logs_configured else 'no log directory configured (LOYALTY_LOG_DIR)'}",
        "",
        "| where | keep | delete | bytes to free |",
        "|---|---:|---:|---:|",
    ]
    for location in (LOCAL, S3, LOGS):
        freed = sum(i.size for i in plan.deletions_at(location) if i.kind != "multipart")
        lines.append(
            f"| {location} | {counts.get(f'{location}_keep', 0):,} | {counts.get(f'{location}_delete', 0):,} | {human_bytes(freed)} |"
        )
    lines += ["", "## Backups (newest first)", "", "| backup | verified | local | offsite | decision | why |", "|---|---|---|---|---|---|"]
    rows = []
    for d in plan.backups:
        where = []
        if d.local_action:
            where.append(f"local: {d.local_action}")
        if d.s3_action:
            where.append(f"s3: {d.s3_action}")
        rows.append(
            f"| `{d.filename}` | {'yes' if d.verified else 'NO'} ({markdown_cell(d.status)}) | {'yes' if d.local else 'no'} | "
            f"{markdown_cell(d.offsite)} | {', '.join(where) or d.action} | {markdown_cell('; '.join(d.reasons))} |"
        )
    lines += _limited(rows, row_limit, "backups")
    lines += _reverification_lines(plan, row_limit)
    overrides = [i for i in plan.items if i.location == LOCAL and i.kind == "backup" and "no confirmed offsite copy" in i.reason]
    if overrides:
        lines += ["", "## Kept locally because no offsite copy is confirmed", ""]
        lines += _limited([f"- `{i.name}`: {markdown_cell(i.reason)}" for i in overrides], row_limit, "files")
    deletions = plan.deletions
    lines += ["", f"## To delete ({len(deletions):,})", ""]
    if deletions:
        lines += _limited(
            [f"- {i.location} {i.kind} `{i.name}` ({human_bytes(i.size)}): {markdown_cell(i.reason)}" for i in deletions], row_limit, "items"
        )
    else:
        lines.append("Nothing.")
    other = [i for i in plan.items if i.kind in ("multipart", "log") and i.action == KEEP]
    if other:
        lines += ["", "## Other items kept", ""]
        lines += _limited([f"- {i.location} {i.kind} `{i.name}`: {markdown_cell(i.reason)}" for i in other], row_limit, "items")
    ignored = [f"- local `{n}`" for n in plan.ignored_local] + [f"- s3 `{n}`" for n in plan.ignored_remote]
    lines += ["", f"## Left alone: outside this database's backup names ({len(ignored):,})", ""]
    lines += _limited(ignored, row_limit, "names") if ignored else ["None."]
    return "\n".join(lines) + "\n"


def plan_summary(plan: RetentionPlan) -> dict[str, int]:
    """Numbers for metadata."""
    counts = plan.counts()
    checked = [r for _req, r in plan.reverification if r is not None]
    return {
        "backups": len(plan.backups),
        "verified_backups": sum(1 for d in plan.backups if d.verified),
        "local_delete": counts.get("local_delete", 0),
        "local_keep": counts.get("local_keep", 0),
        "s3_delete": sum(1 for i in plan.items if i.location == S3 and i.kind != "multipart" and i.action == "delete"),
        "s3_keep": sum(1 for i in plan.items if i.location == S3 and i.kind != "multipart" and i.action == KEEP),
        "logs_delete": counts.get("logs_delete", 0),
        "logs_keep": counts.get("logs_keep", 0),
        "multipart_abort": sum(1 for i in plan.deletions if i.kind == "multipart"),
        "bytes_to_free": plan.bytes_to_free,
        "ignored": len(plan.ignored_local) + len(plan.ignored_remote),
        "kept_not_offsite": sum(
            1 for i in plan.items if i.location == LOCAL and i.kind == "backup" and "no confirmed offsite copy" in i.reason
        ),
        "reverified_copies": len(checked),
        "reverify_failed": sum(1 for r in checked if not r.ok) + sum(1 for _req, r in plan.reverification if r is None),
    }

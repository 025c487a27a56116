"""Re-verification as a gate: apply the re-hash / re-check results of the copies a plan relies on.

Pure: the hashing and the S3 requests happen in ``reverify.py`` (I/O); their results come in here as
evidence. The rules:

- **The floor** (and so the "newest good backup" gate): every copy of a floor backup was re-checked.
  A local file that is gone, has no checksum to compare with, or does not match it, or an S3 object that
  does not match its recorded checksum, means the backup is *not verified*: the plan is BLOCKED and
  nothing is deleted. An S3 copy of a floor backup that is also on disk and merely cannot be confirmed
  (a sidecar missing) is reported, not blocking: the re-hashed local file is the floor. A floor backup
  only on S3 must be confirmed.
- **Offsite copies that local deletions rely on**: an S3 object that is not confirmed (its sidecar
  missing, its checksum or size differing) keeps the local file.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import tzinfo
from typing import Callable, Mapping

from loyalty_ops.lib.retention.types import (
    DELETE,
    FLOOR,
    KEEP,
    LOCAL,
    MISMATCH,
    Evidence,
    Inventory,
    RetentionPlan,
    RetentionPolicy,
    Reverification,
    ReverifyOutcome,
    ReverifyRequest,
)

Checker = Callable[[tuple[ReverifyRequest, ...]], Mapping[tuple[str, str], Reverification]]


def _blocks(request: ReverifyRequest, result: Reverification | None) -> bool:
    if request.purpose != FLOOR:
        return False
    if result is None:
        return True
    if result.ok:
        return False
    return request.location == LOCAL or result.outcome == MISMATCH or request.local_size is None


def apply_reverification(plan: RetentionPlan, results: Mapping[tuple[str, str], Reverification]) -> RetentionPlan:
    """``plan`` with the re-verification results applied (see the module docstring)."""
    outcomes = tuple(ReverifyOutcome(r, results.get((r.location, r.filename))) for r in plan.to_reverify)
    failures: dict[str, list[str]] = {}  # backup -> what failed (blocks)
    vetoed: dict[str, str] = {}  # backup -> why its offsite copy is not confirmed (keeps the local file)
    notes: dict[str, list[str]] = {}
    for outcome in outcomes:
        request, result = outcome
        where = "on disk" if request.location == LOCAL else "on S3"
        if result is None:
            text = f"{request.name} {where} was not re-verified"
        else:
            text = f"{where}: {result.outcome}" + (f" ({result.detail})" if result.detail else "")
        if _blocks(request, result):
            failures.setdefault(request.filename, []).append(text if result is None else f"{request.name} {text}")
        elif request.purpose != FLOOR and (result is None or not result.ok):
            vetoed[request.filename] = text
        if request.purpose == FLOOR:
            notes.setdefault(request.filename, []).append(f"re-verified {text}" if result is not None else text)

    blocked = plan.blocked
    if failures:
        detail = "; ".join(f for fs in failures.values() for f in fs)
        what = (
            f"re-verification failed for {', '.join(sorted(failures))}, which the floor and the newest-good-backup "
            f"gate rely on: {detail}. The backup was damaged or changed after its checks and counts as not verified. "
            "Nothing is deleted until this is fixed."
        )
        blocked = f"{blocked} Also: {what}" if blocked else what

    decisions = []
    for d in plan.backups:
        status = d.status + "".join(f"; {n}" for n in notes.get(d.filename, ()))
        verified = d.verified and d.filename not in failures
        offsite = d.offsite
        local_action = d.local_action
        if d.filename in vetoed and local_action == DELETE:
            offsite, local_action = f"not confirmed: {vetoed[d.filename]}", KEEP
        if blocked:
            d = d._replace(action=KEEP, reasons=("blocked: " + blocked,),
                           local_action=KEEP if d.local_action else None, s3_action=KEEP if d.s3_action else None)
        else:
            d = d._replace(local_action=local_action)
        decisions.append(d._replace(status=status, verified=verified, offsite=offsite))

    items = []
    for item in plan.items:
        if item.action == DELETE:
            if blocked:
                item = item._replace(action=KEEP, reason="blocked: " + blocked)
            elif item.location == LOCAL and item.backup in vetoed:
                item = item._replace(
                    action=KEEP,
                    reason=f"policy would delete it, but it has no confirmed offsite copy ({vetoed[item.backup]}): local copy kept",
                )
        items.append(item)
    return replace(plan, blocked=blocked, backups=tuple(decisions), items=tuple(items), reverified=True, reverification=outcomes)


def plan_with_reverification(
    inventory: Inventory, evidence: Evidence, policy: RetentionPolicy, now, tz: tzinfo, check: Checker
) -> RetentionPlan:
    """Plan, have ``check`` (I/O) re-verify the copies the plan relies on, and apply the results."""
    from loyalty_ops.lib.retention.plan import plan_retention

    plan = plan_retention(inventory, replace(evidence, reverified=None), policy, now, tz)
    return apply_reverification(plan, check(plan.to_reverify))

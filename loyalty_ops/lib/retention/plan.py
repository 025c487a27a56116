"""The retention planner: given what exists (local files, S3 objects, multipart uploads, logs), what is
known about each backup (integrity checks, restore drills, offsite copies, the re-verification of the
copies the plan relies on), the policy and the time, decide what to keep and what to delete, with the
reason for every decision.

Pure: no Dagster, no I/O, no clock. The same inputs always give the same plan. (A little over 400 lines
because this docstring is the policy's reference; types, classification, gates and rendering live in their
own modules beside it.)

The rules, in the order they protect you:

1. **Scope.** Only names that ``parse_backup_name`` accepts, for *this* database, are candidates: local
   ``<db>_YYYYMMDD_HHMMSS.dump.gz|.dump.zst`` directly in the backup directory (plus their ``.sha256``
   and ``.manifest.json`` sidecars) and S3 keys exactly ``PREFIX/YYYY/MM/DD/<file>`` (plus sidecars)
   whose date path matches the file's own stamp (``parse_backup_key``). Anything else is listed as
   ignored ("left alone") and never touched.
2. **The gate.** If the newest backup known (on disk, on S3 or in the backup history) has not passed
   its integrity checks, or has not passed a restore drill once drills exist, or is missing, or is older
   than ``max_backup_age_hours``, the plan is *blocked*: nothing at all is deleted and the run fails.
3. **The floor.** The newest ``min_keep`` verified backups are kept, whatever their age.
4. **Age.** Everything younger than ``keep_days`` is kept.
5. **GFS** (optional). The newest verified backup of each of the last N days, ISO weeks and months
   (in the platform's timezone) is kept.
6. **Offsite.** With an offsite copy configured, a local backup is deleted only when S3 holds its object
   of the same size *and* its sidecars (``.sha256`` always, and every sidecar the backup has on disk, of
   the same size); otherwise the local copy is kept whatever the policy says.
7. **Re-verification** (``gates.apply_reverification``). The plan lists the copies it relies on
   (``to_reverify``): the floor's files and objects, and the S3 objects that local deletions rely on.
   They are re-hashed / re-checked outside the planner and the results applied: a floor copy that does
   not match its recorded checksum blocks the plan; an S3 copy that cannot be confirmed keeps the local
   file. A plan is carried out only once ``reverified``.

A backup's age comes from the timestamp in its name (when the dump was taken, UTC), not from the file's
mtime or the object's LastModified, which change when files are copied or re-uploaded.
"""

from __future__ import annotations

import gc
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Mapping, Optional

from loyalty_ops.lib.backup.naming import SIDECAR_SUFFIX, parse_backup_name
from loyalty_ops.lib.retention.classify import Unit, classify_key, classify_local, group_units, split_sidecar
from loyalty_ops.lib.retention.types import (  # re-exported: the planner's public vocabulary
    DELETE,
    FLOOR,
    KEEP,
    LOCAL,
    LOGS,
    MARKDOWN_ROW_LIMIT,
    OFFSITE,
    S3,
    SIDECAR_SUFFIXES,
    BackupDecision,
    Evidence,
    IntegrityResult,
    Inventory,
    LocalFile,
    LogFile,
    MultipartUpload,
    PlanItem,
    PolicyError,
    Recorded,
    RemoteObject,
    RetentionPlan,
    RetentionPolicy,
    Reverification,
    ReverifyRequest,
)

__all__ = [
    "DELETE", "KEEP", "LOCAL", "LOGS", "S3", "FLOOR", "OFFSITE", "MARKDOWN_ROW_LIMIT", "SIDECAR_SUFFIXES",
    "BackupDecision", "Evidence", "IntegrityResult", "Inventory", "LocalFile", "LogFile", "MultipartUpload",
    "PlanItem", "PolicyError", "Recorded", "RemoteObject", "RetentionPlan", "RetentionPolicy", "Reverification",
    "ReverifyRequest", "classify_key", "classify_local", "split_sidecar", "plan_retention", "restrict_to",
]


def _age(now: datetime, then: datetime) -> timedelta:
    return now - then


def fmt_age(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    if abs(days) >= 1:
        return f"{days:.1f} days"
    return f"{delta.total_seconds() / 3600:.1f} h"


def _period_keys(taken_at: datetime, tz: tzinfo) -> dict[str, str]:
    local = taken_at.astimezone(tz)
    iso = local.isocalendar()
    return {"daily": f"{local:%Y-%m-%d}", "weekly": f"{iso[0]}-W{iso[1]:02d}", "monthly": f"{local:%Y-%m}"}


class _Judge:
    """What the history says about one backup: verified or not, and a readable status."""

    def __init__(self, evidence: Evidence):
        self.evidence = evidence
        self.drills_exist = bool(evidence.drills)

    def integrity(self, filename: str) -> Optional[IntegrityResult]:
        return self.evidence.integrity.get(filename)

    def verified(self, filename: str) -> bool:
        result = self.integrity(filename)
        return result is not None and result.passed and self.evidence.drills.get(filename) is not False

    def status(self, filename: str) -> str:
        result = self.integrity(filename)
        if result is None:
            text = "no integrity check results"
        elif result.passed:
            text = "integrity checks passed"
        else:
            text = "integrity checks FAILED" + (f" ({result.detail})" if result.detail else "")
        drill = self.evidence.drills.get(filename)
        if drill is True:
            text += "; restore drill passed"
        elif drill is False:
            text += "; restore drill FAILED"
        return text

    def last_drill_passed(self) -> bool:
        drills: Mapping[str, bool] = self.evidence.drills
        dated = [(parsed.taken_at, fn) for fn in drills if (parsed := parse_backup_name(fn)) is not None]
        if not dated:
            return True
        return drills[max(dated)[1]] is True


def _gate(units: dict[str, Unit], judge: _Judge, policy: RetentionPolicy, now: datetime, database: str) -> Optional[str]:
    """Why nothing may be deleted, or None: the newest backup known anywhere must be verified, present, recent."""
    known = {fn: unit.name for fn, unit in units.items() if unit.exists}
    for filename in list(judge.evidence.integrity) + list(judge.evidence.drills):
        parsed = parse_backup_name(filename)
        if parsed is not None and parsed.database == database:
            known.setdefault(filename, parsed)
    if not known:
        return f"no backup of database {database!r} was found on disk, on S3 or in the backup history"
    fn = max(known, key=lambda f: (known[f].taken_at, f))
    newest = known[fn]
    result = judge.integrity(fn)
    unit = units.get(fn)
    drills = judge.evidence.drills
    if result is None or not result.passed:
        return f"the newest backup {fn} has not passed its integrity checks ({judge.status(fn)})"
    if judge.drills_exist and policy.drill_required_for_newest and drills.get(fn) is not True:
        outcome = "failed" if drills.get(fn) is False else "not had"
        return f"the newest backup {fn} has {outcome} a restore drill, and drills are in use"
    if judge.drills_exist and not policy.drill_required_for_newest and not judge.last_drill_passed():
        return "the most recent restore drill failed"
    if unit is None or not unit.exists:
        return f"the newest backup {fn} is in the history but is missing from disk and S3"
    if policy.max_backup_age_hours and _age(now, newest.taken_at) > timedelta(hours=policy.max_backup_age_hours):
        return (
            f"the newest backup {fn} is {fmt_age(_age(now, newest.taken_at))} old, more than "
            f"{policy.max_backup_age_hours:g} h: backups seem to be failing"
        )
    return None


def _keep_reasons(units: dict[str, Unit], floor: list[Unit], verified: list[Unit], policy: RetentionPolicy,
                  now: datetime, tz: tzinfo) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {fn: [] for fn in units}
    for rank, unit in enumerate(floor, start=1):
        reasons[unit.filename].append(f"floor: verified backup #{rank} of the newest {policy.min_keep}")
    for period, count in (("daily", policy.gfs_daily), ("weekly", policy.gfs_weekly), ("monthly", policy.gfs_monthly)):
        if not count:
            continue
        seen: list[str] = []
        for unit in verified:
            key = _period_keys(unit.name.taken_at, tz)[period]
            if key in seen:
                continue
            seen.append(key)
            if len(seen) > count:
                break
            reasons[unit.filename].append(f"GFS {period} {key}")
    keep_window = timedelta(days=policy.keep_days)
    for fn, unit in units.items():
        age = _age(now, unit.name.taken_at)
        if age < keep_window:
            reasons[fn].insert(0, f"younger than {policy.keep_days:g} days ({fmt_age(age)} old)")
    return reasons


def offsite_status(unit: Unit, evidence: Evidence) -> str:
    """From the listing alone: "confirmed" only when S3 holds the object with the local file's size and its
    sidecars (``.sha256`` always, and each sidecar the backup has on disk, with the same size)."""
    local, remote = unit.local_main, unit.remote_main
    if remote is None:
        return "not offsite"
    if local is not None and remote.size != local.size:
        return f"size differs (S3 {remote.size}, local {local.size})"
    remote_sidecars = {split_sidecar(o.key)[1]: o for o in unit.remote_sidecars}
    wanted = {SIDECAR_SUFFIX: None, **{split_sidecar(f.name)[1]: f for f in unit.local_sidecars}}
    missing, differs = [], []
    for suffix, local_sidecar in sorted(wanted.items()):
        obj = remote_sidecars.get(suffix)
        if obj is None:
            missing.append(suffix)
        elif local_sidecar is not None and obj.size != local_sidecar.size:
            differs.append(f"{suffix} S3 {obj.size}, local {local_sidecar.size} bytes")
    if missing:
        return f"sidecar {', '.join(missing)} missing on S3"
    if differs:
        return f"sidecar differs ({'; '.join(differs)})"
    return "confirmed" + (", checksum verified at upload" if unit.filename in evidence.offsite_verified else "")


def _lock_hold(unit: Unit, policy: RetentionPolicy, now: datetime, action: str, reason: str) -> tuple[str, str]:
    """A copy under S3 Object Lock is not deleted before its lock ends (S3 would refuse the version, or keep it
    behind a delete marker): kept, saying until when. Its lock ends ``object_lock_days`` after its upload."""
    if action != DELETE or not policy.object_lock_days:
        return action, reason
    uploaded = [o.last_modified for o in (unit.remote_main, *unit.remote_sidecars) if o is not None and o.last_modified]
    if not uploaded:
        return action, reason
    until = max(uploaded) + timedelta(days=policy.object_lock_days)
    if until <= now:
        return action, reason + f" (its S3 Object Lock ended {until:%Y-%m-%d %H:%M} UTC)"
    return KEEP, (
        f"locked by S3 Object Lock until {until:%Y-%m-%d %H:%M} UTC (LOYALTY_S3_OBJECT_LOCK_DAYS="
        f"{policy.object_lock_days:g}): deleted after that; the policy alone would delete it now ({reason})"
    )


def _remote_request(unit: Unit, purpose: str, evidence: Evidence) -> ReverifyRequest:
    obj = unit.remote_main
    sidecar = unit.remote_sidecar()
    local_sidecar = unit.local_sidecar()
    return ReverifyRequest(
        S3, unit.filename, obj.key, obj.size, purpose,
        sidecar=sidecar.key if sidecar else None,
        local_sidecar_size=local_sidecar.size if local_sidecar else None,
        recorded=evidence.recorded.get(unit.filename, Recorded()),
        local_size=unit.local_main.size if unit.local_main else None,
    )


def _floor_requests(floor: list[Unit], evidence: Evidence) -> list[ReverifyRequest]:
    out = []
    for unit in floor:
        if unit.local_main is not None:
            sidecar = unit.local_sidecar()
            out.append(ReverifyRequest(
                LOCAL, unit.filename, unit.local_main.name, unit.local_main.size, FLOOR,
                sidecar=sidecar.name if sidecar else None, recorded=evidence.recorded.get(unit.filename, Recorded()),
            ))
        if unit.remote_main is not None:
            out.append(_remote_request(unit, FLOOR, evidence))
    return out


def plan_retention(
    inventory: Inventory,
    evidence: Evidence,
    policy: RetentionPolicy,
    now: datetime,
    tz: tzinfo = timezone.utc,
) -> RetentionPlan:
    """Decide, for every candidate, keep or delete and why. Raises PolicyError for an invalid policy.
    With ``evidence.reverified`` given, the re-verification results are applied (``gates``)."""
    # The plan allocates a few hundred thousand small objects for 100,000 keys and frees none of them
    # while it runs; the cyclic collector would only re-scan them (half the time). Pause it meanwhile.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        plan = _plan(inventory, evidence, policy, now, tz)
    finally:
        if was_enabled:
            gc.enable()
    if evidence.reverified is not None:
        from loyalty_ops.lib.retention.gates import apply_reverification

        plan = apply_reverification(plan, evidence.reverified)
    return plan


def _plan(inventory: Inventory, evidence: Evidence, policy: RetentionPolicy, now: datetime, tz: tzinfo) -> RetentionPlan:
    policy.validate()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    database = inventory.database
    prefix = inventory.prefix  # normalised by Inventory
    units, ignored_local, ignored_remote = group_units(inventory, prefix)
    judge = _Judge(evidence)
    blocked = _gate(units, judge, policy, now, database)
    if blocked:
        blocked = f"{blocked}. Nothing is deleted until this is fixed."

    newest_first = sorted(units.values(), key=lambda u: (u.name.taken_at, u.filename), reverse=True)
    verified_units = [u for u in newest_first if u.exists and judge.verified(u.filename)]
    floor = verified_units[: policy.min_keep]
    keep_reasons = _keep_reasons(units, floor, verified_units, policy, now, tz)
    to_reverify = _floor_requests(floor, evidence)

    local_items: list[PlanItem] = []
    s3_items: list[PlanItem] = []
    decisions: list[BackupDecision] = []
    for unit in newest_first:
        fn = unit.filename
        verified, status = judge.verified(fn), judge.status(fn)
        reasons = keep_reasons[fn]
        if blocked:
            action, reason = KEEP, "blocked: " + blocked
        elif reasons:
            action, reason = KEEP, "; ".join(reasons)
        else:
            verified_note = "" if verified else f", {status}"
            age = _age(now, unit.name.taken_at)
            action, reason = DELETE, f"{fmt_age(age)} old (over {policy.keep_days:g} days), not in the floor or GFS{verified_note}"

        offsite = "n/a"
        local_action, local_reason = action, reason
        if unit.local_main is not None and inventory.offsite_configured:
            offsite = offsite_status(unit, evidence)
            if action == DELETE and not offsite.startswith("confirmed"):
                local_action = KEEP
                local_reason = f"policy would delete it, but it has no confirmed offsite copy ({offsite}): local copy kept"
            elif action == DELETE:
                to_reverify.append(_remote_request(unit, OFFSITE, evidence))
        elif unit.local_main is None and unit.remote_main is not None:
            offsite = "only on S3"

        if unit.local_main is not None:
            local_items.append(PlanItem(LOCAL, "backup", unit.local_main.name, unit.local_main.size, local_action, local_reason, fn))
        for f in sorted(unit.local_sidecars) if len(unit.local_sidecars) > 1 else unit.local_sidecars:
            side_action = local_action if unit.local_main is not None else action
            side_reason = local_reason if unit.local_main is not None else reason + " (sidecar without its backup file)"
            local_items.append(PlanItem(LOCAL, "sidecar", f.name, f.size, side_action, side_reason, fn))
        s3_action, s3_reason = _lock_hold(unit, policy, now, action, reason)
        if unit.remote_main is not None:
            s3_items.append(PlanItem(S3, "backup", unit.remote_main.key, unit.remote_main.size, s3_action, s3_reason, fn))
        for obj in sorted(unit.remote_sidecars) if len(unit.remote_sidecars) > 1 else unit.remote_sidecars:
            s3_items.append(PlanItem(S3, "sidecar", obj.key, obj.size, s3_action, s3_reason, fn))

        decisions.append(
            BackupDecision(
                filename=fn,
                taken_at=unit.name.taken_at,
                verified=verified,
                status=status,
                local=unit.local_main is not None,
                offsite=offsite,
                action=action,
                reasons=tuple(reasons) if reasons and not blocked else (reason,),
                local_action=local_action if (unit.local_main or unit.local_sidecars) else None,
                s3_action=s3_action if (unit.remote_main or unit.remote_sidecars) else None,
            )
        )

    if inventory.offsite_configured:
        s3_items += _multipart_items(inventory, prefix, database, blocked, policy, now, ignored_remote)
    log_items = _log_items(inventory, blocked, policy, now)
    return RetentionPlan(
        database=database,
        now=now,
        policy=policy,
        offsite_configured=inventory.offsite_configured,
        prefix=prefix,
        blocked=blocked,
        backups=tuple(decisions),
        items=tuple(local_items + s3_items + log_items),
        ignored_local=tuple(sorted(ignored_local)),
        ignored_remote=tuple(sorted(ignored_remote)),
        logs_configured=inventory.logs is not None,
        to_reverify=tuple(to_reverify),
    )


def _multipart_items(inventory: Inventory, prefix: str, database: str, blocked: Optional[str], policy: RetentionPolicy,
                     now: datetime, ignored_remote: list[str]) -> list[PlanItem]:
    """Incomplete multipart uploads of this database's backups under the prefix."""
    items = []
    for upload in sorted(inventory.multipart):
        parsed, _suffix, why = classify_key(upload.key, prefix, database)
        if parsed is None:
            ignored_remote.append(f"{upload.key} (multipart upload {upload.upload_id[:12]}: {why})")
            continue
        age = _age(now, upload.initiated)
        action, reason = _by_age(
            age, timedelta(hours=policy.multipart_max_age_hours), blocked,
            f"incomplete multipart upload started {fmt_age(age)} ago: abort",
            f"multipart upload started {fmt_age(age)} ago, may still be running",
        )
        items.append(PlanItem(S3, "multipart", upload.key, 0, action, reason, parsed.filename, upload.upload_id))
    return items


def _by_age(age: timedelta, limit: timedelta, blocked: Optional[str], delete_reason: str, keep_reason: str) -> tuple[str, str]:
    """Delete what is older than ``limit``, unless the plan is blocked."""
    if blocked:
        return KEEP, "blocked: " + blocked
    if age > limit:
        return DELETE, delete_reason
    return KEEP, keep_reason


def _log_items(inventory: Inventory, blocked: Optional[str], policy: RetentionPolicy, now: datetime) -> list[PlanItem]:
    """``*.log`` older than log_keep_days, as the guide's find -mtime +30."""
    items = []
    for log in sorted(inventory.logs or ()):
        if not log.path.endswith(".log"):
            continue
        age = _age(now, log.mtime)
        action, reason = _by_age(
            age, timedelta(days=policy.log_keep_days), blocked,
            f"log last written {fmt_age(age)} ago (over {policy.log_keep_days:g} days)",
            f"log last written {fmt_age(age)} ago",
        )
        items.append(PlanItem(LOGS, "log", log.path, log.size, action, reason))
    return items


def restrict_to(plan: RetentionPlan, approved: RetentionPlan) -> RetentionPlan:
    """``plan`` with only the deletions that ``approved`` (the plan that was shown) also makes.

    The cleanup re-plans on what exists now and carries out the intersection: a plan shown earlier can
    never delete something the current state would keep, and nothing the reader has not seen is deleted.
    """
    from dataclasses import replace

    allowed = set(approved.fingerprint()) if not approved.blocked else set()
    items = []
    for item in plan.items:
        if item.action == DELETE and (item.location, item.name, item.upload_id) not in allowed:
            item = item._replace(action=KEEP, reason="not in the approved plan (it changed since the plan was made): kept")
        items.append(item)
    return replace(plan, blocked=plan.blocked or approved.blocked, items=tuple(items))


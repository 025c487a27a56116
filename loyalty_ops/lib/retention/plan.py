"""The retention planner: given what exists (local files, S3 objects, multipart uploads, logs), what is
known about each backup (integrity checks, restore drills, offsite copies), the policy and the time,
decide what to keep and what to delete, with the reason for every decision.

Pure: no Dagster, no I/O, no clock. The same inputs always give the same plan.

The rules, in the order they protect you:

1. **Scope.** Only names that ``parse_backup_name`` accepts, for *this* database, are candidates: local
   ``<db>_YYYYMMDD_HHMMSS.dump.gz|.dump.zst`` directly in the backup directory (plus their ``.sha256``
   and ``.manifest.json`` sidecars) and S3 keys exactly ``PREFIX/YYYY/MM/DD/<file>`` (plus sidecars)
   whose date path matches the file's own stamp. Anything else is listed as ignored and never touched.
2. **The gate.** If the newest backup known (on disk, on S3 or in the backup history) has not passed
   its integrity checks, or has not passed a restore drill once drills exist, or is missing, or is older
   than ``max_backup_age_hours``, the plan is *blocked*: nothing at all is deleted and the run fails.
3. **The floor.** The newest ``min_keep`` verified backups are kept, whatever their age.
4. **Age.** Everything younger than ``keep_days`` is kept.
5. **GFS** (optional). The newest verified backup of each of the last N days, ISO weeks and months
   (in the platform's timezone) is kept.
6. **Offsite.** With an offsite copy configured, a local backup is deleted only when S3 holds an object
   for it of the same size; otherwise the local copy is kept whatever the policy says.

A backup's age comes from the timestamp in its name (when the dump was taken, UTC), not from the file's
mtime or the object's LastModified, which change when files are copied or re-uploaded.
"""

from __future__ import annotations

import functools
import gc
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Mapping, NamedTuple, Optional, Sequence

from loyalty_ops.lib.backup.naming import (  # BACKUP_NAME_RE: the one definition of the backup name pattern
    BACKUP_NAME_RE,
    MANIFEST_SUFFIX,
    SIDECAR_SUFFIX,
    BackupName,
    normalize_prefix,
)

KEEP = "keep"
DELETE = "delete"
LOCAL = "local"
S3 = "s3"
LOGS = "logs"
SIDECAR_SUFFIXES = (SIDECAR_SUFFIX, MANIFEST_SUFFIX)
MARKDOWN_ROW_LIMIT = 60


class PolicyError(ValueError):
    """A policy setting is invalid; the message names the setting and the fix."""


@dataclass(frozen=True)
class RetentionPolicy:
    keep_days: float = 30
    min_keep: int = 3
    gfs_daily: int = 0
    gfs_weekly: int = 0
    gfs_monthly: int = 0
    multipart_max_age_hours: float = 24
    log_keep_days: float = 30
    max_backup_age_hours: float = 48  # 0 disables the staleness gate
    # Once restore drills exist: True = the newest backup itself must have passed one (drills after every
    # backup); False = the most recent drill must have passed (drills every N backups).
    drill_required_for_newest: bool = True

    def validate(self) -> None:
        problems = []
        if not (isinstance(self.min_keep, int) and self.min_keep >= 1):
            problems.append(
                f"min_keep must be a whole number >= 1 (the floor can never be switched off), got {self.min_keep!r}: "
                "set LOYALTY_RETENTION_MIN_KEEP to 3 or more"
            )
        for name in ("keep_days", "log_keep_days", "multipart_max_age_hours", "max_backup_age_hours"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                problems.append(f"{name} must be a number >= 0, got {value!r}")
        for name in ("gfs_daily", "gfs_weekly", "gfs_monthly"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                problems.append(f"{name} must be a whole number >= 0 (0 switches it off), got {value!r}")
        if problems:
            raise PolicyError("; ".join(problems))

    def describe(self) -> str:
        parts = [f"keep {self.keep_days:g} days", f"floor {self.min_keep} newest verified"]
        gfs = [f"{n} {label}" for n, label in ((self.gfs_daily, "daily"), (self.gfs_weekly, "weekly"), (self.gfs_monthly, "monthly")) if n]
        if gfs:
            parts.append("GFS " + ", ".join(gfs))
        parts.append(f"logs {self.log_keep_days:g} days")
        parts.append(f"abort multipart uploads older than {self.multipart_max_age_hours:g} h")
        if not self.drill_required_for_newest:
            parts.append("the most recent restore drill must have passed")
        if self.max_backup_age_hours:
            parts.append(f"newest backup at most {self.max_backup_age_hours:g} h old")
        return "; ".join(parts)


# ---------------------------------------------------------------- inputs


class LocalFile(NamedTuple):
    name: str  # a file directly in the backup directory
    size: int
    mtime: datetime


class RemoteObject(NamedTuple):
    key: str
    size: int
    last_modified: datetime


class MultipartUpload(NamedTuple):
    key: str
    upload_id: str
    initiated: datetime


class LogFile(NamedTuple):
    path: str  # relative to the log directory
    size: int
    mtime: datetime


class IntegrityResult(NamedTuple):
    passed: bool
    detail: str = ""  # e.g. which checks failed or never ran


@dataclass(frozen=True)
class Inventory:
    """Everything that exists. ``remote is None`` means no offsite copy is configured; ``logs is None``
    means no log directory is configured."""

    database: str
    local: tuple[LocalFile, ...] = ()
    remote: Optional[tuple[RemoteObject, ...]] = None
    prefix: str = "backups/"
    multipart: tuple[MultipartUpload, ...] = ()
    logs: Optional[tuple[LogFile, ...]] = None

    @property
    def offsite_configured(self) -> bool:
        return self.remote is not None


@dataclass(frozen=True)
class Evidence:
    """What the backup history says, keyed by backup file name."""

    integrity: Mapping[str, IntegrityResult] = field(default_factory=dict)
    drills: Mapping[str, bool] = field(default_factory=dict)  # newest drill result per backup
    offsite_verified: frozenset[str] = frozenset()  # offsite_backup_copy reported verified=True


# ---------------------------------------------------------------- outputs


class PlanItem(NamedTuple):
    location: str  # local | s3 | logs
    kind: str  # backup | sidecar | multipart | log
    name: str  # local file name, S3 key or log path
    size: int
    action: str  # keep | delete
    reason: str
    backup: Optional[str] = None  # the backup file name this item belongs to
    upload_id: Optional[str] = None


class BackupDecision(NamedTuple):
    filename: str
    taken_at: datetime
    verified: bool
    status: str  # human summary of integrity / drill
    local: bool
    offsite: str  # "confirmed", "not offsite", "size differs", "n/a"
    action: str  # for the backup as a whole
    reasons: tuple[str, ...]
    local_action: Optional[str]
    s3_action: Optional[str]


@dataclass(frozen=True)
class RetentionPlan:
    database: str
    now: datetime
    policy: RetentionPolicy
    offsite_configured: bool
    prefix: str
    blocked: Optional[str]
    backups: tuple[BackupDecision, ...]
    items: tuple[PlanItem, ...]
    ignored_local: tuple[str, ...]
    ignored_remote: tuple[str, ...]
    logs_configured: bool

    @property
    def deletions(self) -> tuple[PlanItem, ...]:
        return tuple(item for item in self.items if item.action == DELETE)

    def deletions_at(self, location: str) -> tuple[PlanItem, ...]:
        return tuple(item for item in self.items if item.action == DELETE and item.location == location)

    @property
    def bytes_to_free(self) -> int:
        return sum(item.size for item in self.deletions if item.kind != "multipart")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            key = f"{item.location}_{item.action}"
            out[key] = out.get(key, 0) + 1
        return out

    def fingerprint(self) -> tuple:
        """What the plan deletes, for comparing two plans."""
        return tuple((i.location, i.name, i.upload_id) for i in self.deletions)

    def markdown(self, row_limit: int = MARKDOWN_ROW_LIMIT) -> str:
        return render_markdown(self, row_limit)


# ---------------------------------------------------------------- classification


@dataclass
class _Unit:
    name: BackupName
    filename: str  # == name.filename, kept as the string (formatting it 100,000 times is slow)
    local_main: Optional[LocalFile] = None
    local_sidecars: list[LocalFile] = field(default_factory=list)
    remote_main: Optional[RemoteObject] = None
    remote_sidecars: list[RemoteObject] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.local_main is not None or self.remote_main is not None


def _split_sidecar(name: str) -> tuple[str, Optional[str]]:
    for suffix in SIDECAR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, None


@functools.lru_cache(maxsize=1 << 18)  # a backup's file and sidecar keys share one name; BackupName is immutable
def _parse_strict(filename: str) -> Optional[BackupName]:
    """``parse_backup_name`` plus a canonical-spelling check, without ``strptime`` (a plan may parse 100,000
    names). Uses naming's own pattern; equivalence with ``parse_backup_name`` is a property test.
    None for names outside the pattern, impossible dates (month 13) and non-canonical spellings."""
    match = BACKUP_NAME_RE.match(filename)
    if match is None:
        return None
    stamp = match.group("stamp")
    try:
        taken_at = datetime(
            int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]), int(stamp[13:15]),
            tzinfo=timezone.utc,
        )
    except ValueError:
        return None
    if taken_at.year < 1000:  # %Y would not give the same four digits back
        return None
    return BackupName(taken_at, match.group("db"), "gzip" if match.group("suffix") == ".dump.gz" else "zstd")


def classify_local(name: str, database: str) -> tuple[Optional[BackupName], Optional[str], str]:
    """(backup name, sidecar suffix or None, why ignored). The backup name is None when out of scope."""
    base, suffix = _split_sidecar(name)
    parsed = _parse_strict(base)
    if parsed is None:
        return None, None, "not a backup name"
    if parsed.database != database:
        return None, None, f"backup of another database ({parsed.database})"
    return parsed, suffix, ""


def classify_key(key: str, prefix: str, database: str) -> tuple[Optional[BackupName], Optional[str], str]:
    """Like :func:`classify_local` for an S3 key: it must be exactly ``PREFIX/YYYY/MM/DD/<file>[sidecar]``
    (``BackupName.s3_key``) with the date path of the file's own stamp."""
    return _classify_key(key, normalize_prefix(prefix), database)


def _classify_key(key: str, prefix: str, database: str) -> tuple[Optional[BackupName], Optional[str], str]:
    if not key.startswith(prefix):
        return None, None, "outside the prefix"
    base, suffix = _split_sidecar(key)
    filename = base.rsplit("/", 1)[-1]
    parsed = _parse_strict(filename)
    if parsed is None:
        return None, None, "not a backup name"
    if parsed.database != database:
        return None, None, f"backup of another database ({parsed.database})"
    stamp = filename[len(parsed.database) + 1 :]
    if base != f"{prefix}{stamp[0:4]}/{stamp[4:6]}/{stamp[6:8]}/{filename}":  # == parsed.s3_key(prefix), cheaper
        return None, None, "not at PREFIX/YYYY/MM/DD/<file> for its own date"
    return parsed, suffix, ""


def _last_drill_passed(drills: Mapping[str, bool]) -> bool:
    dated = [(parsed.taken_at, fn) for fn in drills if (parsed := _parse_strict(fn)) is not None]
    if not dated:
        return True
    return drills[max(dated)[1]] is True


def _age(now: datetime, then: datetime) -> timedelta:
    return now - then


def _fmt_age(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    if abs(days) >= 1:
        return f"{days:.1f} days"
    return f"{delta.total_seconds() / 3600:.1f} h"


def _period_keys(taken_at: datetime, tz: tzinfo) -> dict[str, str]:
    local = taken_at.astimezone(tz)
    iso = local.isocalendar()
    return {"daily": f"{local:%Y-%m-%d}", "weekly": f"{iso[0]}-W{iso[1]:02d}", "monthly": f"{local:%Y-%m}"}


# ---------------------------------------------------------------- the planner


def plan_retention(
    inventory: Inventory,
    evidence: Evidence,
    policy: RetentionPolicy,
    now: datetime,
    tz: tzinfo = timezone.utc,
) -> RetentionPlan:
    """Decide, for every candidate, keep or delete and why. Raises PolicyError for an invalid policy."""
    # The plan allocates a few hundred thousand small objects for 100,000 keys and frees none of them
    # while it runs; the cyclic collector would only re-scan them (half the time). Pause it meanwhile.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _plan(inventory, evidence, policy, now, tz)
    finally:
        if was_enabled:
            gc.enable()


def _plan(inventory: Inventory, evidence: Evidence, policy: RetentionPolicy, now: datetime, tz: tzinfo) -> RetentionPlan:
    policy.validate()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    database = inventory.database
    prefix = normalize_prefix(inventory.prefix)

    units: dict[str, _Unit] = {}
    ignored_local: list[str] = []
    ignored_remote: list[str] = []

    def unit_for(name: BackupName, filename: str) -> _Unit:
        unit = units.get(filename)
        if unit is None:
            unit = units[filename] = _Unit(name, filename)
        return unit

    for f in inventory.local:
        parsed, suffix, why = classify_local(f.name, database)
        if parsed is None:
            ignored_local.append(f"{f.name} ({why})")
        elif suffix is None:
            unit_for(parsed, f.name).local_main = f
        else:
            unit_for(parsed, f.name[: -len(suffix)]).local_sidecars.append(f)
    # A backup's object and its sidecars share a base key: classify each base once.
    bases: dict[str, tuple[Optional[_Unit], str]] = {}
    for obj in inventory.remote or ():
        base, suffix = _split_sidecar(obj.key)
        known_base = bases.get(base)
        if known_base is None:
            parsed, _suffix, why = _classify_key(base, prefix, database)
            known_base = bases[base] = (unit_for(parsed, base.rsplit("/", 1)[-1]) if parsed is not None else None, why)
        unit, why = known_base
        if unit is None:
            ignored_remote.append(f"{obj.key} ({why})")
        elif suffix is None:
            unit.remote_main = obj
        else:
            unit.remote_sidecars.append(obj)

    drills_exist = bool(evidence.drills)

    def integrity_of(filename: str) -> Optional[IntegrityResult]:
        return evidence.integrity.get(filename)

    def is_verified(filename: str) -> bool:
        result = integrity_of(filename)
        return result is not None and result.passed and evidence.drills.get(filename) is not False

    def status_of(filename: str) -> str:
        result = integrity_of(filename)
        if result is None:
            text = "no integrity check results"
        elif result.passed:
            text = "integrity checks passed"
        else:
            text = "integrity checks FAILED" + (f" ({result.detail})" if result.detail else "")
        drill = evidence.drills.get(filename)
        if drill is True:
            text += "; restore drill passed"
        elif drill is False:
            text += "; restore drill FAILED"
        return text

    # ---- the gate: the newest backup known anywhere must be verified, present and recent
    known: dict[str, BackupName] = {fn: unit.name for fn, unit in units.items() if unit.exists}
    for filename in list(evidence.integrity) + list(evidence.drills):
        parsed = _parse_strict(filename)
        if parsed is not None and parsed.database == database:
            known.setdefault(filename, parsed)
    blocked: Optional[str] = None
    if not known:
        blocked = f"no backup of database {database!r} was found on disk, on S3 or in the backup history"
    else:
        fn = max(known, key=lambda f: (known[f].taken_at, f))
        newest = known[fn]
        result = integrity_of(fn)
        unit = units.get(fn)
        if result is None or not result.passed:
            blocked = f"the newest backup {fn} has not passed its integrity checks ({status_of(fn)})"
        elif drills_exist and policy.drill_required_for_newest and evidence.drills.get(fn) is not True:
            outcome = "failed" if evidence.drills.get(fn) is False else "not had"
            blocked = f"the newest backup {fn} has {outcome} a restore drill, and drills are in use"
        elif drills_exist and not policy.drill_required_for_newest and not _last_drill_passed(evidence.drills):
            blocked = "the most recent restore drill failed"
        elif unit is None or not unit.exists:
            blocked = f"the newest backup {fn} is in the history but is missing from disk and S3"
        elif policy.max_backup_age_hours and _age(now, newest.taken_at) > timedelta(hours=policy.max_backup_age_hours):
            blocked = (
                f"the newest backup {fn} is {_fmt_age(_age(now, newest.taken_at))} old, more than "
                f"{policy.max_backup_age_hours:g} h: backups seem to be failing"
            )
    if blocked:
        blocked = f"{blocked}. Nothing is deleted until this is fixed."

    # ---- keep reasons from the policy
    newest_first = sorted(units.values(), key=lambda u: (u.name.taken_at, u.filename), reverse=True)
    verified_units = [u for u in newest_first if u.exists and is_verified(u.filename)]
    keep_reasons: dict[str, list[str]] = {fn: [] for fn in units}
    for rank, unit in enumerate(verified_units[: policy.min_keep], start=1):
        keep_reasons[unit.filename].append(f"floor: verified backup #{rank} of the newest {policy.min_keep}")
    for period, count in (("daily", policy.gfs_daily), ("weekly", policy.gfs_weekly), ("monthly", policy.gfs_monthly)):
        if not count:
            continue
        seen: list[str] = []
        for unit in verified_units:
            key = _period_keys(unit.name.taken_at, tz)[period]
            if key in seen:
                continue
            seen.append(key)
            if len(seen) > count:
                break
            keep_reasons[unit.filename].append(f"GFS {period} {key}")
    keep_window = timedelta(days=policy.keep_days)
    for fn, unit in units.items():
        age = _age(now, unit.name.taken_at)
        if age < keep_window:
            keep_reasons[fn].insert(0, f"younger than {policy.keep_days:g} days ({_fmt_age(age)} old)")

    # ---- decisions and items, newest backup first; local items, then S3, then logs
    local_items: list[PlanItem] = []
    s3_items: list[PlanItem] = []
    decisions: list[BackupDecision] = []
    for unit in newest_first:
        fn = unit.filename
        verified, status = is_verified(fn), status_of(fn)
        age = _age(now, unit.name.taken_at)
        reasons = keep_reasons[fn]
        if blocked:
            action, reason = KEEP, "blocked: " + blocked
        elif reasons:
            action, reason = KEEP, "; ".join(reasons)
        else:
            verified_note = "" if verified else f", {status}"
            action, reason = DELETE, f"{_fmt_age(age)} old (over {policy.keep_days:g} days), not in the floor or GFS{verified_note}"

        # offsite status of the local copy
        offsite = "n/a"
        local_action, local_reason = action, reason
        if unit.local_main is not None and inventory.offsite_configured:
            remote = unit.remote_main
            if remote is None:
                offsite = "not offsite"
            elif remote.size != unit.local_main.size:
                offsite = f"size differs (S3 {remote.size}, local {unit.local_main.size})"
            else:
                offsite = "confirmed" + (", checksum verified at upload" if fn in evidence.offsite_verified else "")
            if action == DELETE and not offsite.startswith("confirmed"):
                local_action = KEEP
                local_reason = f"policy would delete it, but it has no confirmed offsite copy ({offsite}): local copy kept"
        elif unit.local_main is None and unit.remote_main is not None:
            offsite = "only on S3"

        if unit.local_main is not None:
            local_items.append(PlanItem(LOCAL, "backup", unit.local_main.name, unit.local_main.size, local_action, local_reason, fn))
        for f in sorted(unit.local_sidecars) if len(unit.local_sidecars) > 1 else unit.local_sidecars:
            side_action = local_action if unit.local_main is not None else action
            side_reason = local_reason if unit.local_main is not None else reason + " (sidecar without its backup file)"
            local_items.append(PlanItem(LOCAL, "sidecar", f.name, f.size, side_action, side_reason, fn))
        if unit.remote_main is not None:
            s3_items.append(PlanItem(S3, "backup", unit.remote_main.key, unit.remote_main.size, action, reason, fn))
        for obj in sorted(unit.remote_sidecars) if len(unit.remote_sidecars) > 1 else unit.remote_sidecars:
            s3_items.append(PlanItem(S3, "sidecar", obj.key, obj.size, action, reason, fn))

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
                s3_action=action if (unit.remote_main or unit.remote_sidecars) else None,
            )
        )

    # ---- incomplete multipart uploads of this database's backups under the prefix
    if inventory.offsite_configured:
        for upload in sorted(inventory.multipart):
            parsed, _suffix, why = _classify_key(upload.key, prefix, database)
            if parsed is None:
                ignored_remote.append(f"{upload.key} (multipart upload {upload.upload_id[:12]}: {why})")
                continue
            age = _age(now, upload.initiated)
            if blocked:
                action, reason = KEEP, "blocked: " + blocked
            elif age > timedelta(hours=policy.multipart_max_age_hours):
                action, reason = DELETE, f"incomplete multipart upload started {_fmt_age(age)} ago: abort"
            else:
                action, reason = KEEP, f"multipart upload started {_fmt_age(age)} ago, may still be running"
            s3_items.append(PlanItem(S3, "multipart", upload.key, 0, action, reason, parsed.filename, upload.upload_id))

    # ---- logs: *.log older than log_keep_days, as the guide's find -mtime +30
    log_items: list[PlanItem] = []
    for log in sorted(inventory.logs or ()):
        if not log.path.endswith(".log"):
            continue
        age = _age(now, log.mtime)
        if blocked:
            action, reason = KEEP, "blocked: " + blocked
        elif age > timedelta(days=policy.log_keep_days):
            action, reason = DELETE, f"log last written {_fmt_age(age)} ago (over {policy.log_keep_days:g} days)"
        else:
            action, reason = KEEP, f"log last written {_fmt_age(age)} ago"
        log_items.append(PlanItem(LOGS, "log", log.path, log.size, action, reason))
    items = local_items + s3_items + log_items
    return RetentionPlan(
        database=database,
        now=now,
        policy=policy,
        offsite_configured=inventory.offsite_configured,
        prefix=prefix,
        blocked=blocked,
        backups=tuple(decisions),
        items=tuple(items),
        ignored_local=tuple(sorted(ignored_local)),
        ignored_remote=tuple(sorted(ignored_remote)),
        logs_configured=inventory.logs is not None,
    )


def restrict_to(plan: RetentionPlan, approved: RetentionPlan) -> RetentionPlan:
    """``plan`` with only the deletions that ``approved`` (the plan that was shown) also makes.

    The cleanup re-plans on what exists now and carries out the intersection: a plan shown earlier can
    never delete something the current state would keep, and nothing the reader has not seen is deleted.
    """
    allowed = set(approved.fingerprint()) if not approved.blocked else set()
    items = []
    for item in plan.items:
        if item.action == DELETE and (item.location, item.name, item.upload_id) not in allowed:
            item = item._replace(action=KEEP, reason="not in the approved plan (it changed since the plan was made): kept")
        items.append(item)
    return RetentionPlan(
        database=plan.database, now=plan.now, policy=plan.policy, offsite_configured=plan.offsite_configured,
        prefix=plan.prefix, blocked=plan.blocked or approved.blocked, backups=plan.backups, items=tuple(items),
        ignored_local=plan.ignored_local, ignored_remote=plan.ignored_remote, logs_configured=plan.logs_configured,
    )


# ---------------------------------------------------------------- markdown


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _limited(rows: Sequence[str], limit: int, what: str) -> list[str]:
    out = list(rows[:limit])
    if len(rows) > limit:
        out.append(f"\n_... and {len(rows) - limit:,} more {what} (see the counts above)._")
    return out


def render_markdown(plan: RetentionPlan, row_limit: int = MARKDOWN_ROW_LIMIT) -> str:
    counts = plan.counts()
    lines = [f"# Retention plan for `{plan.database}`", ""]
    if plan.blocked:
        lines += [f"**BLOCKED: {plan.blocked}**", ""]
    else:
        lines += [f"**{len(plan.deletions):,} items to delete, {_human(plan.bytes_to_free)} to free.**", ""]
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
            f"| {location} | {counts.get(f'{location}_keep', 0):,} | {counts.get(f'{location}_delete', 0):,} | {_human(freed)} |"
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
            f"| `{d.filename}` | {'yes' if d.verified else 'NO'} ({_cell(d.status)}) | {'yes' if d.local else 'no'} | "
            f"{_cell(d.offsite)} | {', '.join(where) or d.action} | {_cell('; '.join(d.reasons))} |"
        )
    lines += _limited(rows, row_limit, "backups")
    overrides = [i for i in plan.items if i.location == LOCAL and i.kind == "backup" and "no confirmed offsite copy" in i.reason]
    if overrides:
        lines += ["", "## Kept locally because no offsite copy is confirmed", ""]
        lines += _limited([f"- `{i.name}`: {_cell(i.reason)}" for i in overrides], row_limit, "files")
    deletions = plan.deletions
    lines += ["", f"## To delete ({len(deletions):,})", ""]
    if deletions:
        lines += _limited(
            [f"- {i.location} {i.kind} `{i.name}` ({_human(i.size)}): {_cell(i.reason)}" for i in deletions], row_limit, "items"
        )
    else:
        lines.append("Nothing.")
    other = [i for i in plan.items if i.kind in ("multipart", "log") and i.action == KEEP]
    if other:
        lines += ["", "## Other items kept", ""]
        lines += _limited([f"- {i.location} {i.kind} `{i.name}`: {_cell(i.reason)}" for i in other], row_limit, "items")
    ignored = [f"- local `{n}`" for n in plan.ignored_local] + [f"- s3 `{n}`" for n in plan.ignored_remote]
    lines += ["", f"## Left alone: outside this database's backup names ({len(ignored):,})", ""]
    lines += _limited(ignored, row_limit, "names") if ignored else ["None."]
    return "\n".join(lines) + "\n"


def plan_summary(plan: RetentionPlan) -> dict[str, int]:
    """Numbers for metadata."""
    counts = plan.counts()
    return {
        "backups": len(plan.backups),
        "verified_backups": sum(1 for d in plan.backups if d.verified),
        "local_delete": counts.get("local_delete", 0),
        "local_keep": counts.get("local_keep", 0),
        "s3_delete": sum(1 for i in plan.items if i.location == S3 and i.kind != "multipart" and i.action == DELETE),
        "s3_keep": sum(1 for i in plan.items if i.location == S3 and i.kind != "multipart" and i.action == KEEP),
        "logs_delete": counts.get("logs_delete", 0),
        "logs_keep": counts.get("logs_keep", 0),
        "multipart_abort": sum(1 for i in plan.deletions if i.kind == "multipart"),
        "bytes_to_free": plan.bytes_to_free,
        "ignored": len(plan.ignored_local) + len(plan.ignored_remote),
        "kept_not_offsite": sum(
            1 for i in plan.items if i.location == LOCAL and i.kind == "backup" and "no confirmed offsite copy" in i.reason
        ),
    }

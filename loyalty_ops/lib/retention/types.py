"""The retention planner's vocabulary: the policy, what exists (inventory), what is known (evidence,
including the re-verification of what the plan relies on) and the plan itself. Pure data, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, NamedTuple, Optional

from loyalty_ops.lib.backup.inventory import LocalFile, MultipartUpload, RemoteObject  # noqa: F401  (part of the vocabulary)
from loyalty_ops.lib.backup.location import DEFAULT_PREFIX, SIDECAR_SUFFIXES  # noqa: F401
from loyalty_ops.lib.backup.naming import normalize_prefix

KEEP = "keep"
DELETE = "delete"
LOCAL = "local"
S3 = "s3"
LOGS = "logs"
MARKDOWN_ROW_LIMIT = 60

# Outcomes of re-verifying one copy of a backup.
MATCHES = "matches"
MISMATCH = "MISMATCH"  # content or size disagrees with the recorded checksum: damaged or replaced
INCOMPLETE = "incomplete"  # cannot be confirmed: gone, a sidecar missing, nothing recorded to compare with

FLOOR = "floor"  # the backup is one the floor (and the "newest good backup" gate) relies on
OFFSITE = "offsite"  # a local deletion relies on this S3 copy


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
    # S3 Object Lock days of every uploaded object (LOYALTY_S3_OBJECT_LOCK_DAYS); 0: none. A locked S3 copy is
    # never planned for deletion before its lock ends (last modified + these days).
    object_lock_days: float = 0

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
        if self.object_lock_days:
            parts.append(f"S3 copies locked (Object Lock) for {self.object_lock_days:g} days after upload")
        return "; ".join(parts)


# ---------------------------------------------------------------- inputs


class LogFile(NamedTuple):
    path: str  # relative to the log directory
    size: int
    mtime: datetime


class IntegrityResult(NamedTuple):
    passed: bool
    detail: str = ""  # e.g. which checks failed or never ran


class Recorded(NamedTuple):
    """What the backup history recorded about a backup when it was taken and copied offsite."""

    sha256: Optional[str] = None  # hex SHA-256 of the file (database_backup)
    bytes: Optional[int] = None
    s3_checksum: Optional[str] = None  # ChecksumSHA256 S3 reported after the upload (offsite_backup_copy)


class ReverifyRequest(NamedTuple):
    """One copy of a backup to re-check before anything is deleted (I/O done outside the planner)."""

    location: str  # local | s3
    filename: str  # the backup file name
    name: str  # the local file name or the S3 key
    size: int  # as listed
    purpose: str  # floor | offsite
    sidecar: Optional[str] = None  # the .sha256 sidecar (local name or S3 key) when listed
    local_sidecar_size: Optional[int] = None  # the local .sha256 sidecar's size, to compare with the S3 one
    recorded: Recorded = Recorded()
    local_size: Optional[int] = None  # for an S3 copy of a backup also on disk: the local file's size


class Reverification(NamedTuple):
    outcome: str  # matches | MISMATCH | incomplete
    detail: str  # what was expected and what was found

    @property
    def ok(self) -> bool:
        return self.outcome == MATCHES


@dataclass(frozen=True)
class Inventory:
    """Everything that exists. ``remote is None`` means no offsite copy is configured; ``logs is None``
    means no log directory is configured. ``prefix`` is normalised once here (``BackupLocation.prefix``
    already is), so the planner compares keys with plain string checks."""

    database: str
    local: tuple[LocalFile, ...] = ()
    remote: Optional[tuple[RemoteObject, ...]] = None
    prefix: str = DEFAULT_PREFIX
    multipart: tuple[MultipartUpload, ...] = ()
    logs: Optional[tuple[LogFile, ...]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix))

    @property
    def offsite_configured(self) -> bool:
        return self.remote is not None


@dataclass(frozen=True)
class Evidence:
    """What the backup history says, keyed by backup file name, and (once done) the re-verification of
    the copies the plan relies on, keyed by (location, backup file name)."""

    integrity: Mapping[str, IntegrityResult] = field(default_factory=dict)
    drills: Mapping[str, bool] = field(default_factory=dict)  # newest drill result per backup
    offsite_verified: frozenset[str] = frozenset()  # offsite_backup_copy reported verified=True
    recorded: Mapping[str, Recorded] = field(default_factory=dict)
    reverified: Optional[Mapping[tuple[str, str], Reverification]] = None  # None: not re-verified (yet)


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
    status: str  # human summary of integrity / drill / re-verification
    local: bool
    offsite: str  # "confirmed", "not offsite", "size differs", "sidecar ... missing on S3", "n/a"
    action: str  # for the backup as a whole
    reasons: tuple[str, ...]
    local_action: Optional[str]
    s3_action: Optional[str]


class ReverifyOutcome(NamedTuple):
    request: ReverifyRequest
    result: Optional[Reverification]  # None: not re-verified


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
    # The copies to re-check before deleting: the floor's backups (local and S3) and the S3 copies that
    # local deletions rely on. ``reverified`` is True once their results were applied to the plan.
    to_reverify: tuple[ReverifyRequest, ...] = ()
    reverified: bool = False
    reverification: tuple[ReverifyOutcome, ...] = ()

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
        from loyalty_ops.lib.retention.render import render_markdown

        return render_markdown(self, row_limit)

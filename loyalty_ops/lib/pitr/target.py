"""Recovery targets: what a point-in-time restore recovers to, which base backup it starts from, and the
refusals that come before anything is touched (a target in the future, or before the oldest base backup)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Sequence
from zoneinfo import ZoneInfo

from loyalty_ops.lib.pitr.engine import BaseBackup

PLATFORM_TIMEZONE = "Africa/Harare"


class RecoveryRefused(ValueError):
    """The restore was refused before anything was changed; the message says why and what to do."""


@dataclass(frozen=True)
class RecoveryTarget:
    kind: str  # "time", "name" or "latest"
    time: Optional[datetime] = None
    name: Optional[str] = None

    def describe(self) -> str:
        if self.kind == "time":
            return f"time {self.time.isoformat()}"  # type: ignore[union-attr]
        if self.kind == "name":
            return f"restore point {self.name!r}"
        return "the end of the archive (latest)"

    @property
    def pauses(self) -> bool:
        """Whether recovery pauses when it reaches the target (and waits to be promoted): every target but latest."""
        return self.kind != "latest"

    def settings(self) -> dict[str, str]:
        """The recovery_target_* settings. A time or a restore point pauses when reached, and the instance is then
        promoted by request (``pg_ctl promote``): a promotion asked for ends recovery without waiting for the
        end-of-recovery checkpoint (PostgreSQL writes an end-of-recovery record and checkpoints in the
        background), where ``recovery_target_action = promote`` would wait for it. ``latest`` ends at the end of
        the archive, with that checkpoint."""
        out = {"recovery_target_timeline": "latest"}
        if self.kind == "time":
            out["recovery_target_time"] = self.time.astimezone(timezone.utc).isoformat(sep=" ")  # type: ignore[union-attr]
        elif self.kind == "name":
            out["recovery_target_name"] = self.name  # type: ignore[assignment]
        if self.pauses:
            out["recovery_target_action"] = "pause"
        return out


def parse_target_time(value: str, default_timezone: str = PLATFORM_TIMEZONE) -> datetime:
    """ISO 8601; a time without a zone is read in ``default_timezone`` (Africa/Harare)."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RecoveryRefused(
            f"target_time must be an ISO 8601 time, got {value!r}; example: 2026-12-01T14:30:00 (Africa/Harare) "
            "or 2026-12-01T12:30:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=ZoneInfo(default_timezone))


def make_target(target_time: Optional[str], target_name: Optional[str], latest: bool) -> RecoveryTarget:
    given = [x for x in (target_time, target_name) if x] + (["latest"] if latest else [])
    if len(given) != 1:
        raise RecoveryRefused("give exactly one of target_time, target_name or latest: true; example: "
                              "target_time: '2026-12-01T14:30:00'")
    if target_time:
        return RecoveryTarget("time", time=parse_target_time(target_time))
    if target_name:
        return RecoveryTarget("name", name=target_name)
    return RecoveryTarget("latest")


def choose_base_backup(backups: Sequence[BaseBackup], target: RecoveryTarget, now: datetime,
                       backup_id: Optional[str] = None) -> BaseBackup:
    """The base backup to start from: the newest complete one that ends before the target time (or the newest
    for a restore point or latest; or ``backup_id``). Refuses a target in the future or before every backup."""
    complete = [b for b in backups if b.complete and b.end_time is not None]
    if not complete:
        raise RecoveryRefused("the archive holds no complete base backup: run weekly_base_backup_job first")
    if target.kind == "time":
        assert target.time is not None
        if target.time > now:
            raise RecoveryRefused(f"target_time {target.time.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})")
        oldest = min(complete, key=lambda b: b.end_time)  # type: ignore[arg-type,return-value]
        if target.time < oldest.end_time:  # type: ignore[operator]
            raise RecoveryRefused(
                f"target_time {target.time.isoformat()} is before the oldest base backup ({oldest.backup_id}, consistent "
                f"from {oldest.end_time.isoformat()}): nothing can be recovered to that point"  # type: ignore[union-attr]
            )
    if backup_id:
        chosen = [b for b in complete if b.backup_id == backup_id]
        if not chosen:
            raise RecoveryRefused(f"backup_id {backup_id!r} is not a complete base backup; known: "
                                  + ", ".join(b.backup_id for b in complete))
        if target.kind == "time" and chosen[0].end_time > target.time:  # type: ignore[operator]
            raise RecoveryRefused(f"base backup {backup_id} ends after target_time; choose an older one or leave backup_id empty")
        return chosen[0]
    if target.kind == "time":
        return max((b for b in complete if b.end_time <= target.time), key=lambda b: b.end_time)  # type: ignore[operator,return-value,arg-type]
    return max(complete, key=lambda b: b.end_time)  # type: ignore[arg-type,return-value]

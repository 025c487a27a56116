"""PITR retention: the engine's own recovery-window policy (``barman-cloud-backup-delete -r "RECOVERY WINDOW OF N
DAYS"``), shown as a plan first (its ``--dry-run``), with the same floor as the logical retention: nothing is
deleted while WAL archiving is failing, and never the newest base backup that passed its PITR drill."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from loyalty_ops.lib.pitr.engine import BaseBackup

_DELETED_BACKUP = re.compile(r"/base/([0-9]{8}T[0-9]{6})/backup\.info")


def backups_in_dry_run(output: str) -> list[str]:
    """The backup ids the engine's dry run says it would delete (each deletion lists its backup.info)."""
    return sorted(set(_DELETED_BACKUP.findall(output)))


@dataclass(frozen=True)
class PitrRetentionPlan:
    window_days: int
    backups: tuple[BaseBackup, ...]
    delete: tuple[str, ...]
    newest_drilled: Optional[str]
    blocked: tuple[str, ...]

    def rows(self) -> list[list[str]]:
        out = []
        for b in self.backups:
            decision = "delete" if b.backup_id in self.delete else "keep"
            reason = ("outside the recovery window (engine)" if decision == "delete" else
                      "newest drilled" if b.backup_id == self.newest_drilled else "inside the recovery window")
            out.append([b.backup_id, b.status, b.end_time.isoformat(timespec="seconds") if b.end_time else "", decision, reason])
        return out


def plan_retention(window_days: int, backups: Sequence[BaseBackup], engine_deletes: Sequence[str],
                   newest_drilled: Optional[str], archiving_problems: Sequence[str]) -> PitrRetentionPlan:
    blocked = [f"WAL archiving is not healthy: {p}" for p in archiving_problems]
    complete = [b for b in backups if b.complete]
    if complete and complete[-1].backup_id in engine_deletes:
        blocked.append(f"the engine would delete the newest base backup {complete[-1].backup_id}")
    if newest_drilled and newest_drilled in engine_deletes:
        blocked.append(f"the engine would delete {newest_drilled}, the newest base backup that passed its PITR drill")
    return PitrRetentionPlan(window_days, tuple(backups), tuple(engine_deletes), newest_drilled, tuple(blocked))

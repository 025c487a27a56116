"""What the backup history says about each backup, for ``latest``: passed its checks (and drill) or not, and why.

The Dagster glue (``defs/restore/history.py``) reads the integrity-check outcomes and the drill results from
the instance and hands them over as plain values; this module only judges them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional


@dataclass(frozen=True)
class BackupVerdict:
    filename: str
    passed: bool
    reason: str  # why it may or may not be restored as 'latest', for the run log


@dataclass
class BackupHistory:
    """Verdicts by backup file name. Empty: this instance has no backup history (a new ops box)."""

    verdicts: dict[str, BackupVerdict] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.verdicts

    def verdict(self, filename: str) -> Optional[BackupVerdict]:
        return self.verdicts.get(filename)


def judge_backup(
    filename: str, checks: Mapping[str, Optional[bool]], drill: Optional[tuple[bool, str]] = None
) -> BackupVerdict:
    """Passed when every integrity check ran and passed, and its drill (when one ran) passed.

    ``checks`` maps check name to True/False, or None when it never ran; ``drill`` is (passed, message).
    """
    failed = sorted(name for name, ok in checks.items() if ok is False)
    missing = sorted(name for name, ok in checks.items() if ok is None)
    if failed:
        return BackupVerdict(filename, False, f"its integrity check {', '.join(failed)} failed")
    if missing or not checks:
        return BackupVerdict(
            filename, False, f"its integrity check {', '.join(missing) or '(none recorded)'} never ran, so it was never verified"
        )
    if drill is not None and not drill[0]:
        return BackupVerdict(filename, False, f"its restore drill failed ({drill[1] or 'no message'})")
    drilled = " and its restore drill" if drill is not None else " (no restore drill ran for it)"
    return BackupVerdict(filename, True, f"it passed its {len(checks)} integrity checks{drilled}")


def build_history(
    backups: Iterable[tuple[str, Mapping[str, Optional[bool]]]], drills: Iterable[tuple[str, bool, str]]
) -> BackupHistory:
    """``backups``: (filename, checks) newest first; ``drills``: (filename, passed, message) newest first.

    The newest record of a file wins (a backup re-checked or re-drilled later is judged by that).
    """
    newest_drill: dict[str, tuple[bool, str]] = {}
    for filename, passed, message in drills:
        newest_drill.setdefault(filename, (bool(passed), message))
    history = BackupHistory()
    for filename, checks in backups:
        if filename and filename not in history.verdicts:
            history.verdicts[filename] = judge_backup(filename, checks, newest_drill.get(filename))
    return history

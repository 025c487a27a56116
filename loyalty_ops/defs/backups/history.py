"""Reading backup history back from the Dagster instance: which backups exist and which were verified.

Other domains (restore, retention, reports) use this instead of re-parsing event logs themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import dagster as dg

BACKUP_ASSET_KEY = dg.AssetKey("database_backup")
OFFSITE_ASSET_KEY = dg.AssetKey("offsite_backup_copy")
INTEGRITY_CHECK_NAMES = (
    "backup_archive_decompresses",
    "backup_archive_complete",
    "backup_checksum_matches",
    "backup_toc_lists_all_tables",
    "backup_size_plausible",
)


def metadata_values(entry: dg.EventLogEntry) -> dict[str, Any]:
    """Plain Python values of a materialization's metadata."""
    mat = entry.asset_materialization
    if mat is None:
        return {}
    return {key: getattr(value, "value", value) for key, value in mat.metadata.items()}


@dataclass
class BackupRecord:
    run_id: str
    timestamp: float
    metadata: dict[str, Any]
    storage_id: int = 0
    checks: dict[str, Optional[bool]] = field(default_factory=dict)  # None: not evaluated

    @property
    def path(self) -> Optional[str]:
        return self.metadata.get("path")

    @property
    def bytes(self) -> Optional[int]:
        return self.metadata.get("bytes")

    @property
    def verified(self) -> bool:
        """Every integrity check ran for this backup and passed."""
        return all(self.checks.get(name) is True for name in INTEGRITY_CHECK_NAMES)


def _check_results_by_materialization(instance: dg.DagsterInstance, check_name: str, limit: int) -> dict[int, bool]:
    """The newest outcome of one check for each materialization it evaluated (keyed by storage id).

    Dagster's instance has no public reader of check history, so this uses the event log storage's
    execution history; only records that hold an evaluation count (a planned or still running check has
    none), which is what "succeeded or failed" means without naming Dagster's private status enum."""
    key = dg.AssetCheckKey(BACKUP_ASSET_KEY, check_name)
    results: dict[int, bool] = {}
    for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=limit):
        evaluation = record.event.asset_check_evaluation if record.event else None
        if evaluation is None:
            continue
        target = evaluation.target_materialization_data if evaluation is not None else None
        if target is not None and target.storage_id not in results:
            results[target.storage_id] = bool(evaluation.passed)
    return results


def recent_backups(instance: dg.DagsterInstance, limit: int = 20) -> list[BackupRecord]:
    """The newest backups first, each with the outcome of its integrity checks."""
    records = instance.fetch_materializations(BACKUP_ASSET_KEY, limit=limit).records
    checks = {name: _check_results_by_materialization(instance, name, limit * 3) for name in INTEGRITY_CHECK_NAMES}
    out = []
    for record in records:
        entry = record.event_log_entry
        out.append(
            BackupRecord(
                run_id=entry.run_id,
                timestamp=entry.timestamp,
                metadata=metadata_values(entry),
                storage_id=record.storage_id,
                checks={name: checks[name].get(record.storage_id) for name in INTEGRITY_CHECK_NAMES},
            )
        )
    return out


def last_verified_backup(instance: dg.DagsterInstance, *, exclude_run_id: Optional[str] = None) -> Optional[BackupRecord]:
    for record in recent_backups(instance):
        if record.run_id != exclude_run_id and record.verified:
            return record
    return None

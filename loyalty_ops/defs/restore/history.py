"""Reading what the Dagster instance knows about past backups (integrity checks and drills) for ``latest``."""

from __future__ import annotations

import os

import dagster as dg

from loyalty_ops.defs.backups.history import metadata_values, recent_backups
from loyalty_ops.lib.restore.history import BackupHistory, build_history

DRILL_ASSET_KEY = dg.AssetKey("restore_drill")
HISTORY_DEPTH = 100  # backups (and drills) looked at; `latest` never needs to go back further


def backup_history(instance: dg.DagsterInstance, limit: int = HISTORY_DEPTH) -> BackupHistory:
    """Each recent backup's verdict: its four integrity checks, and the newest drill of it when one ran."""
    backups = []
    for record in recent_backups(instance, limit=limit):
        filename = record.metadata.get("filename") or os.path.basename(record.path or "")
        backups.append((filename, record.checks))
    drills = []
    for record in instance.fetch_materializations(DRILL_ASSET_KEY, limit=limit).records:
        meta = metadata_values(record.event_log_entry)
        if meta.get("backup_filename"):
            drills.append((meta["backup_filename"], bool(meta.get("passed")), str(meta.get("message") or "")))
    return build_history(backups, drills)

"""What the Dagster instance knows about each backup, turned into the planner's ``Evidence``:
integrity checks (``recent_backups``), restore drills (``restore_drill`` materializations), verified
offsite copies (``offsite_backup_copy`` materializations), and the checksums and sizes both recorded,
which the re-verification compares the files and objects with."""

from pathlib import PurePath
from typing import Optional

import dagster as dg

from loyalty_ops.defs.backups.history import OFFSITE_ASSET_KEY, INTEGRITY_CHECK_NAMES, metadata_values, recent_backups
from loyalty_ops.lib.retention.types import Evidence, IntegrityResult, Recorded

DRILL_ASSET_KEY = dg.AssetKey("restore_drill")


def _filename(metadata: dict) -> Optional[str]:
    name = metadata.get("filename") or metadata.get("backup_filename")
    if not name and metadata.get("path"):
        name = PurePath(str(metadata["path"])).name
    return str(name) if name else None


def gather_evidence(instance: dg.DagsterInstance, limit: int = 400) -> Evidence:
    integrity: dict[str, IntegrityResult] = {}
    recorded: dict[str, Recorded] = {}
    for record in recent_backups(instance, limit=limit):  # newest first: the newest record per file wins
        name = _filename(record.metadata)
        if not name or name in integrity:
            continue
        recorded[name] = Recorded(sha256=_hex(record.metadata.get("sha256")), bytes=_int(record.metadata.get("bytes")))
        if record.verified:
            integrity[name] = IntegrityResult(True)
        else:
            failed = [n for n in INTEGRITY_CHECK_NAMES if record.checks.get(n) is False]
            missing = [n for n in INTEGRITY_CHECK_NAMES if record.checks.get(n) is None]
            detail = ", ".join([f"{n} failed" for n in failed] + [f"{n} did not run" for n in missing])
            integrity[name] = IntegrityResult(False, detail)

    drills: dict[str, bool] = {}
    for record in instance.fetch_materializations(DRILL_ASSET_KEY, limit=limit).records:
        meta = metadata_values(record.event_log_entry)
        name = meta.get("backup_filename")
        if name and name not in drills:
            drills[str(name)] = meta.get("passed") is True

    offsite: set[str] = set()
    for record in instance.fetch_materializations(OFFSITE_ASSET_KEY, limit=limit).records:
        meta = metadata_values(record.event_log_entry)
        name = _filename(meta) or (PurePath(str(meta["key"])).name if meta.get("key") else None)
        if name and meta.get("verified") is True and name not in offsite:
            offsite.add(name)
            known = recorded.get(name, Recorded())
            recorded[name] = known._replace(
                sha256=known.sha256 or _hex(meta.get("sha256")),
                bytes=known.bytes if known.bytes is not None else _int(meta.get("bytes")),
                s3_checksum=_text(meta.get("s3_checksum_sha256")),
            )
    return Evidence(integrity=integrity, drills=drills, offsite_verified=frozenset(offsite), recorded=recorded)


def _text(value) -> Optional[str]:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _hex(value) -> Optional[str]:
    text = _text(value)
    return text.lower() if text else None


def _int(value) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

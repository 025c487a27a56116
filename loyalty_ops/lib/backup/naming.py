"""Backup file names and S3 keys, in the guide's form: ``loyalty_YYYYMMDD_HHMMSS.dump.gz``.

The prefix is the database name, so backups of different databases never share a name and retention
can tell them apart. ``.dump.zst`` is the zstd variant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

COMPRESSION_SUFFIXES = {"gzip": ".dump.gz", "zstd": ".dump.zst"}
SIDECAR_SUFFIX = ".sha256"
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_MARKER = ".partial-"
BACKUP_NAME_RE = re.compile(r"^(?P<db>[A-Za-z0-9_\-]+)_(?P<stamp>\d{8}_\d{6})(?P<suffix>\.dump\.gz|\.dump\.zst)$")


@dataclass(frozen=True, order=True)
class BackupName:
    """A parsed backup file name."""

    taken_at: datetime
    database: str
    compression: str

    @property
    def filename(self) -> str:
        return f"{self.database}_{self.taken_at:%Y%m%d_%H%M%S}{COMPRESSION_SUFFIXES[self.compression]}"

    def s3_key(self, prefix: str) -> str:
        """``PREFIX/YYYY/MM/DD/loyalty_YYYYMMDD_HHMMSS.dump.gz``."""
        return f"{normalize_prefix(prefix)}{self.taken_at:%Y/%m/%d}/{self.filename}"


def backup_name(database: str, taken_at: datetime, compression: str = "gzip") -> BackupName:
    if compression not in COMPRESSION_SUFFIXES:
        raise ValueError(f"compression must be one of {sorted(COMPRESSION_SUFFIXES)}, got {compression!r}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", database):
        raise ValueError(
            f"database name {database!r} cannot be used in a backup file name; "
            "use letters, digits, '_' or '-' only"
        )
    return BackupName(taken_at.astimezone(timezone.utc).replace(microsecond=0, tzinfo=timezone.utc), database, compression)


def parse_backup_name(filename: str) -> Optional[BackupName]:
    """The parsed name, or None when the file is not a backup of this tool (sidecars, temp files, others)."""
    match = BACKUP_NAME_RE.match(filename)
    if not match:
        return None
    stamp = datetime.strptime(match.group("stamp"), "%Y%m%d_%H%M%S").replace(tzinfo=timezone.utc)
    compression = "gzip" if match.group("suffix") == ".dump.gz" else "zstd"
    return BackupName(stamp, match.group("db"), compression)


def normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""

"""Backup file names and S3 keys, in the guide's form: ``loyalty_YYYYMMDD_HHMMSS.dump.gz``.

The prefix is the database name, so backups of different databases never share a name and retention
can tell them apart. ``.dump.zst`` is the zstd variant. These are the parsing primitives; the rest of the
tool asks :class:`loyalty_ops.lib.backup.location.BackupLocation` (``key_for``, ``parse_key``,
``sidecar_names``), which holds the normalised prefix.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

COMPRESSION_SUFFIXES = {"gzip": ".dump.gz", "zstd": ".dump.zst"}
SIDECAR_SUFFIX = ".sha256"
MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_MARKER = ".partial-"
ENCRYPTED_SUFFIX = ".age"  # client-side encryption (lib/backup/encryption.py): loyalty_..._.dump.gz.age
BACKUP_NAME_RE = re.compile(
    r"^(?P<db>[A-Za-z0-9_\-]+)_(?P<stamp>\d{8}_\d{6})(?P<suffix>\.dump\.gz|\.dump\.zst)(?P<age>\.age)?$"
)


@dataclass(frozen=True, order=True)
class BackupName:
    """A parsed backup file name."""

    taken_at: datetime
    database: str
    compression: str
    encrypted: bool = False  # age-encrypted after compression: ``.dump.gz.age``

    @property
    def filename(self) -> str:
        suffix = COMPRESSION_SUFFIXES[self.compression] + (ENCRYPTED_SUFFIX if self.encrypted else "")
        return f"{self.database}_{self.taken_at:%Y%m%d_%H%M%S}{suffix}"

    def s3_key(self, prefix: str) -> str:
        """``PREFIX/YYYY/MM/DD/loyalty_YYYYMMDD_HHMMSS.dump.gz``."""
        return f"{normalize_prefix(prefix)}{self.taken_at:%Y/%m/%d}/{self.filename}"


def backup_name(database: str, taken_at: datetime, compression: str = "gzip", *, encrypted: bool = False) -> BackupName:
    if compression not in COMPRESSION_SUFFIXES:
        raise ValueError(f"compression must be one of {sorted(COMPRESSION_SUFFIXES)}, got {compression!r}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", database):
        raise ValueError(
            f"database name {database!r} cannot be used in a backup file name; "
            "use letters, digits, '_' or '-' only"
        )
    return BackupName(
        taken_at.astimezone(timezone.utc).replace(microsecond=0, tzinfo=timezone.utc), database, compression, encrypted
    )


@functools.lru_cache(maxsize=1 << 18)  # retention may parse 100,000 keys; a file and its sidecars share a name
def parse_backup_name(filename: str) -> Optional[BackupName]:
    """The one strict parser of backup names, used by backup, restore, retention, the drill and reports.

    None when the file is not a backup of this tool: other names, sidecars, temporary files, impossible
    timestamps (``loyalty_20251301_000000.dump.gz``, month 13) and non-canonical spellings. Such files are
    "left alone" everywhere, never parsed into an error. Avoids ``strptime`` (it is slow and accepts more
    than ``%Y%m%d_%H%M%S`` writes).
    """
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
    compression = "gzip" if match.group("suffix") == ".dump.gz" else "zstd"
    return BackupName(taken_at, match.group("db"), compression, match.group("age") is not None)


def parse_backup_key(key: str, prefix: str) -> Optional[BackupName]:
    """The backup an S3 key names, when it is exactly ``PREFIX/YYYY/MM/DD/<file>`` for the file's own date
    (``BackupName.s3_key``); None for anything else under (or outside) the prefix."""
    prefix = normalize_prefix(prefix)
    if not key.startswith(prefix):
        return None
    parsed = parse_backup_name(key.rsplit("/", 1)[-1])
    if parsed is None or key != parsed.s3_key(prefix):
        return None
    return parsed


def normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""

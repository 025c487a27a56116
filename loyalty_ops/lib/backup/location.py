"""Where backups live: the one object that owns the backup directory, the bucket, the key prefix and the
S3 upload settings (encryption, KMS key, storage class).

The settings layer builds one :class:`BackupLocation` (``BackupStorage.location(offsite)``) and every part
of the tool is handed it: the backup asks it for the file to write, the offsite copy for the key to upload
to, restore and the drill for where to look, retention and the morning report for what is ours. So the
naming rules live here once:

- files: ``BACKUP_DIR/<database>_YYYYMMDD_HHMMSS.dump.gz`` (or ``.dump.zst``), safety backups taken by a
  replace in ``BACKUP_DIR/safety/``;
- keys: ``PREFIX/YYYY/MM/DD/<file>`` for the file's own date, the prefix normalised once (``"/a/b/"`` and
  ``"a/b"`` are both ``"a/b/"``; ``""`` and ``"/"`` put the dates at the top of the bucket);
- sidecars: ``<file>.sha256`` and ``<file>.manifest.json`` next to the file, and next to the key; the
  cluster globals ``<database>_YYYYMMDD_HHMMSS.globals.sql.gz`` beside them (:meth:`globals_name`);
- anything else (other names, other databases, a month-13 stamp, a key off its date path) is not ours:
  :meth:`parse_name`/:meth:`parse_key` return None, using naming.py's one strict parser.

The S3 upload settings are checked when the location is made: a bad value is refused with the variable's
name and an example, before anything is written or uploaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from loyalty_ops.lib.backup.globals import globals_filename_for
from loyalty_ops.lib.backup.object_lock import lock_args
from loyalty_ops.lib.backup.naming import (
    MANIFEST_SUFFIX,
    SIDECAR_SUFFIX,
    BackupName,
    normalize_prefix,
    parse_backup_key,
    parse_backup_name,
)

DEFAULT_BACKUP_DIR = "backups"
DEFAULT_PREFIX = "backups/"
SAFETY_SUBDIR = "safety"  # safety backups taken by a replace: BACKUP_DIR/safety/, restored as safety/<file>
SIDECAR_SUFFIXES = (SIDECAR_SUFFIX, MANIFEST_SUFFIX)
SSE_CHOICES = ("AES256", "aws:kms")
STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
)


class LocationError(ValueError):
    """A setting of the backup location is invalid; the message names the variable and a good value."""


def upload_settings_problems(sse: str, kms_key_id: Optional[str], storage_class: str) -> list[str]:
    """What is wrong with the S3 upload settings, one message per problem (empty when they are fine)."""
    problems = []
    if sse not in SSE_CHOICES:
        problems.append(f"LOYALTY_S3_SSE must be one of {', '.join(SSE_CHOICES)}, got {sse!r} (e.g. LOYALTY_S3_SSE=AES256)")
    elif sse == "AES256" and kms_key_id:
        problems.append("LOYALTY_S3_KMS_KEY_ID is set but LOYALTY_S3_SSE is AES256; set LOYALTY_S3_SSE=aws:kms")
    if storage_class not in STORAGE_CLASSES:
        problems.append(
            f"LOYALTY_S3_STORAGE_CLASS must be one of {', '.join(STORAGE_CLASSES)}, got {storage_class!r} "
            "(e.g. LOYALTY_S3_STORAGE_CLASS=STANDARD_IA)"
        )
    return problems


@dataclass(frozen=True)
class BackupLocation:
    """The backup directory on this machine and, when ``bucket`` is set, the offsite copy on S3."""

    backup_dir: Path
    bucket: Optional[str] = None
    prefix: str = DEFAULT_PREFIX  # normalised on creation: "" or "a/b/"
    sse: str = "AES256"
    kms_key_id: Optional[str] = None
    storage_class: str = "STANDARD"
    object_lock_days: Optional[int] = None  # S3 Object Lock retention of every object (object_lock.py)
    object_lock_mode: str = "GOVERNANCE"

    def __post_init__(self) -> None:
        object.__setattr__(self, "backup_dir", Path(self.backup_dir))
        object.__setattr__(self, "bucket", (self.bucket or "").strip() or None)
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix or ""))
        object.__setattr__(self, "kms_key_id", self.kms_key_id or None)
        if self.bucket is not None:
            problems = upload_settings_problems(self.sse, self.kms_key_id, self.storage_class)
            if problems:
                raise LocationError("; ".join(problems))

    # --- this machine -------------------------------------------------------------------------------

    @property
    def safety_dir(self) -> Path:
        """Where a replace puts its safety backup: apart from the nightly backups, never ``latest``."""
        return self.backup_dir / SAFETY_SUBDIR

    def local_path_for(self, name: BackupName) -> Path:
        return self.backup_dir / name.filename

    # --- S3 -----------------------------------------------------------------------------------------

    @property
    def offsite_configured(self) -> bool:
        return self.bucket is not None

    @property
    def prefix_uri(self) -> str:
        """``s3://bucket/prefix/`` (or a note that no offsite copy is configured)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.bucket else "no offsite copy configured"

    def key_for(self, name: BackupName) -> str:
        """``PREFIX/YYYY/MM/DD/<file>`` for the backup's own date (UTC)."""
        return name.s3_key(self.prefix)

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def parse_key(self, key: str) -> Optional[BackupName]:
        """The backup a key names when it is exactly :meth:`key_for` of it; None for sidecars, stray keys,
        keys off their date path or outside the prefix."""
        return parse_backup_key(key, self.prefix)

    def upload_args(self) -> dict[str, str]:
        """boto3 ``ExtraArgs`` for every object we put: encryption, storage class, SHA-256 checksums."""
        args = {"ServerSideEncryption": self.sse, "StorageClass": self.storage_class, "ChecksumAlgorithm": "SHA256"}
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        # Locked from now for N days (ObjectLockMode, ObjectLockRetainUntilDate), when a lock is configured.
        args.update(lock_args(self.object_lock_days, self.object_lock_mode))
        return args

    # --- names --------------------------------------------------------------------------------------

    @staticmethod
    def parse_name(filename: str) -> Optional[BackupName]:
        """The backup a file name names (naming.py's one strict parser); None for anything else."""
        return parse_backup_name(filename)

    @staticmethod
    def globals_name(filename_or_key: str) -> Optional[str]:
        """The cluster globals file (or key) beside a backup file (or key): ``<db>_<stamp>.globals.sql.gz``
        in the same directory; None for a name that is not a backup's."""
        head, sep, filename = filename_or_key.rpartition("/")
        name = globals_filename_for(filename)
        return f"{head}{sep}{name}" if name else None

    @staticmethod
    def sidecar_names(filename: str) -> tuple[str, ...]:
        """``<file>.sha256`` and ``<file>.manifest.json``: the same suffixes on disk and on S3."""
        return tuple(filename + suffix for suffix in SIDECAR_SUFFIXES)

    def describe(self) -> str:
        """Where backups are looked for, for messages: the directory and, when configured, the S3 prefix."""
        return f"{self.backup_dir}" + (f" or {self.prefix_uri}" if self.bucket else "")

"""What a restore or drill needs from outside: the server, the tools, where backups live, how to report,
and (for ``latest``) what the backup history says about each backup."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.tools import PgToolRunner
from loyalty_ops.lib.progress import ProgressSnapshot
from loyalty_ops.lib.restore.history import BackupHistory


def _quiet(_msg: str) -> None:
    pass


@dataclass
class RestoreEnvironment:
    """Everything a restore needs from outside: the server, the tools, where files live, how to report."""

    spec: ConnectionSpec  # the server; ``dbname`` is the source database (whose backups 'latest' means)
    runner: PgToolRunner
    location: BackupLocation  # the backup directory and (with a bucket) the S3 prefix
    work_dir: Optional[Path] = None  # for the decompressed archive and downloads; default the backup directory
    tmp_dir: Optional[Path] = None  # for the decompressed archive only (LOYALTY_RESTORE_TMP_DIR); default work_dir
    s3_client: Any = None  # a boto3 client for ``location.bucket``; None: backups on this machine only
    log: Callable[[str], None] = _quiet
    warn: Callable[[str], None] = _quiet
    on_progress: Optional[Callable[[ProgressSnapshot], None]] = None
    progress_interval_s: float = 10.0
    compression: str = "gzip"  # for the safety backup
    # age public keys the safety backup is encrypted to, like the nightly backups (LOYALTY_BACKUP_AGE_RECIPIENTS):
    # the copy of the database a replace leaves behind is no less secret than they are. None: not encrypted.
    age_recipients: Optional[str] = None
    # Verdicts of the integrity checks and drills of past backups; None or empty: no history to consult
    # (``latest`` then picks the newest backup whose own file verifies).
    history: Optional[BackupHistory] = None
    # The server the backups were taken from, asked for the source database's size (a restore's expected
    # size) when restores and drills go to another server; None: ``spec``'s server.
    source_spec: Optional[ConnectionSpec] = None
    # age identities that decrypt encrypted (``.age``) backups (LOYALTY_BACKUP_AGE_IDENTITY_FILE); None: no key here
    identities: Optional[list] = field(default=None, repr=False)

    @property
    def backup_dir(self) -> Path:
        return self.location.backup_dir

    @property
    def s3(self) -> Any:
        """The S3 client when backups are looked for on S3 too (a bucket and a client), else None."""
        return self.s3_client if self.location.offsite_configured else None

    @property
    def scratch_dir(self) -> Path:
        return Path(self.work_dir or self.backup_dir)

    @property
    def archive_dir(self) -> Path:
        """Where the decompressed archive is written (``pg_restore -j`` needs a seekable file)."""
        return Path(self.tmp_dir or self.scratch_dir)

"""Finding a backup (on this machine or on S3) and downloading it.

:func:`locate_backup` resolves ``latest``, a file name or an S3 key to one backup and the SHA-256 it must
have (from its ``.sha256`` sidecar, its manifest, or the S3 object's metadata; they must agree).
:func:`fetch_backup` downloads it when it is not local, into a locked work file. What happens to the
file next (hashing, decompressing, reading the whole archive) is in :mod:`archive_passes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from loyalty_ops.lib.backup.integrity import (
    read_sidecar,
)
from loyalty_ops.lib.backup.inventory import list_objects
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup.manifest import BackupManifest, read_manifest
from loyalty_ops.lib.backup.naming import SIDECAR_SUFFIX, BackupName
from loyalty_ops.lib.backup.stream import remove_stale_partials
from loyalty_ops.lib.backup.tempfiles import create_locked, locked_partial_path
from loyalty_ops.lib.progress import ProgressMeter, ProgressSnapshot
from loyalty_ops.lib.restore.errors import (
    BackupNotFound,
    ChecksumMismatch,
    RestoreRefused,
)
from loyalty_ops.lib.restore.plan import BackupRef

MISSING_KEY_HINT = (
    "restoring, drilling and checking it need the private key: set LOYALTY_BACKUP_AGE_IDENTITY_FILE to the file "
    "age-keygen wrote (e.g. /etc/loyalty/backup-age-key.txt)"
)

READ_BYTES = 4 * 1024 * 1024
ProgressFn = Optional[Callable[[ProgressSnapshot], None]]


@dataclass
class LocatedBackup:
    filename: str
    expected_sha256: str
    local_path: Optional[Path] = None
    s3_key: Optional[str] = None
    bucket: Optional[str] = None
    size: Optional[int] = None
    manifest: Optional[BackupManifest] = None
    checksum_sources: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        if self.local_path is not None:
            return str(self.local_path)
        return f"s3://{self.bucket}/{self.s3_key}"


@dataclass
class Candidate:
    """One backup that ``latest`` may choose: its local file and/or its S3 key."""

    name: BackupName
    local_path: Optional[Path] = None
    s3_key: Optional[str] = None

    @property
    def filename(self) -> str:
        return self.name.filename


def list_candidates(location: BackupLocation, database: Optional[str], client: Any = None) -> list[Candidate]:
    """Every backup of ``database`` in the backup directory and (given a ``client``) under the S3 prefix,
    newest first, one entry per backup.

    Only names the strict parser accepts count: a stray ``loyalty_20251301_000000.dump.gz`` (month 13), a
    sidecar or a key outside ``PREFIX/YYYY/MM/DD/`` is left alone.
    """
    found: dict[str, Candidate] = {}
    backup_dir = location.backup_dir
    if backup_dir.is_dir():
        for path in backup_dir.iterdir():
            name = location.parse_name(path.name)
            if name and (database is None or name.database == database) and path.is_file():
                found[name.filename] = Candidate(name, local_path=path)
    if client is not None and location.offsite_configured:
        for obj in list_objects(client, location):
            name = location.parse_key(obj.key)
            if name and (database is None or name.database == database):
                found.setdefault(name.filename, Candidate(name)).s3_key = obj.key
    return sorted(found.values(), key=lambda c: (c.name.taken_at, c.filename), reverse=True)


def _s3_text(client: Any, bucket: str, key: str) -> Optional[str]:
    from botocore.exceptions import ClientError

    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def _expected_sha(filename: str, sources: dict[str, Optional[str]]) -> tuple[str, list[str]]:
    known = {where: value.lower() for where, value in sources.items() if value}
    if not known:
        raise ChecksumMismatch(
            "verify checksum",
            f"{filename} has no recorded SHA-256 (no {filename}{SIDECAR_SUFFIX} sidecar, no manifest): "
            "it cannot be verified, so it will not be restored",
        )
    values = set(known.values())
    if len(values) > 1:
        listed = "; ".join(f"{where} says {value}" for where, value in known.items())
        raise ChecksumMismatch("verify checksum", f"the recorded SHA-256 values of {filename} disagree: {listed}")
    return values.pop(), sorted(known)


def locate_local(path: Path) -> LocatedBackup:
    """A local backup file with the SHA-256 its sidecar and manifest record (refused when they disagree or are missing)."""
    manifest = read_manifest(path)
    sha, sources = _expected_sha(
        path.name, {"sidecar": read_sidecar(path), "manifest": manifest.sha256 if manifest else None}
    )
    return LocatedBackup(path.name, sha, local_path=path, size=path.stat().st_size, manifest=manifest, checksum_sources=sources)


def locate_s3(client: Any, location: BackupLocation, key: str) -> LocatedBackup:
    """An S3 object with the SHA-256 its sidecar, manifest and object metadata record."""
    from botocore.exceptions import ClientError

    bucket = location.bucket
    filename = key.rsplit("/", 1)[-1]
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise BackupNotFound("find backup", f"{location.uri_for(key)} does not exist") from None
        raise RestoreRefused("find backup", f"S3 refused HEAD of {location.uri_for(key)} ({code})") from None
    sidecar_key, manifest_key = location.sidecar_names(key)
    sidecar_text = _s3_text(client, bucket, sidecar_key)
    manifest_text = _s3_text(client, bucket, manifest_key)
    manifest = BackupManifest.from_json(manifest_text) if manifest_text else None
    sidecar = sidecar_text.split()[0] if sidecar_text and sidecar_text.strip() else None
    sha, sources = _expected_sha(
        filename,
        {
            "sidecar": sidecar,
            "manifest": manifest.sha256 if manifest else None,
            "object metadata": head.get("Metadata", {}).get("sha256"),
        },
    )
    return LocatedBackup(
        filename, sha, s3_key=key, bucket=bucket, size=int(head["ContentLength"]), manifest=manifest,
        checksum_sources=sources,
    )


def locate_backup(
    ref: BackupRef, location: BackupLocation, *, database: Optional[str] = None, client: Any = None
) -> LocatedBackup:
    """The backup ``ref`` names, with its expected SHA-256. Raises :class:`BackupNotFound` (nothing touched).
    S3 is looked at only with a ``client`` and a bucket.

    For ``latest`` this is only the newest *file*; a restore's ``latest`` (the newest backup that passed its
    checks) is chosen by ``fetch.fetch_latest``.
    """
    s3 = client if location.offsite_configured else None
    if ref.kind == "latest":
        candidates = list_candidates(location, database, s3)
        if not candidates:
            raise BackupNotFound("find backup", f"there is no backup of {database or 'any database'} in {where_backups_live(location, s3)}")
        newest = candidates[0]
        if newest.local_path is not None:
            return locate_local(newest.local_path)
        assert s3 is not None and newest.s3_key is not None
        return locate_s3(s3, location, newest.s3_key)
    if ref.kind == "file":
        path = Path(ref.value) if Path(ref.value).is_absolute() else location.backup_dir / ref.value
        if path.is_file():
            return locate_local(path)
        name = location.parse_name(path.name) if not ref.is_safety else None  # safety backups are never offsite
        if s3 is not None and name is not None:
            try:
                return locate_s3(s3, location, location.key_for(name))
            except BackupNotFound:
                pass
        where = f"{path}" + (f" nor at {location.uri_for(location.key_for(name))}" if s3 and name else "")
        raise BackupNotFound("find backup", f"backup {ref.value} not found: not at {where}")
    if s3 is None:
        raise BackupNotFound(
            "find backup", f"backup {ref.value} is an S3 key but no offsite bucket is configured (LOYALTY_S3_BUCKET)"
        )
    return locate_s3(s3, location, ref.value)


def where_backups_live(location: BackupLocation, client: Any = None) -> str:
    """The backup directory and, when S3 is looked at too, the S3 prefix."""
    return location.describe() if client is not None else str(location.backup_dir)


_HELD_WORK_FILES: dict[str, int] = {}  # path -> the descriptor whose flock keeps the file from others' cleanup


def open_work_file(work_dir: Path, filename: str, role: str) -> tuple[Path, int]:
    """Create a private (0600) temporary file that stays under an ``flock`` until :func:`release_work_file`.

    The backup code's stale-file cleanup removes such a file only when nobody holds its lock, so a restore
    running in another container that shares the directory never loses its download or archive mid-restore,
    and the file of a killed restore is removed by the next cleanup. Returns the path and a descriptor to
    write through (close it when written; the lock stays with the file until it is released).
    """
    path = locked_partial_path(Path(work_dir) / f"{filename}.{role}")
    held = create_locked(path)
    _HELD_WORK_FILES[str(path)] = held
    return path, os.dup(held)


def release_work_file(path: Optional[Path]) -> None:
    """Remove a work file and drop its lock."""
    if path is None:
        return
    Path(path).unlink(missing_ok=True)
    held = _HELD_WORK_FILES.pop(str(path), None)
    if held is not None:
        os.close(held)


def fetch_backup(
    located: LocatedBackup,
    work_dir: Path,
    client: Any,
    *,
    on_progress: ProgressFn = None,
    progress_interval_s: float = 10.0,
) -> tuple[Path, bool]:
    """A local path to the compressed backup, downloading it when needed. Returns (path, downloaded)."""
    if located.local_path is not None:
        return located.local_path, False
    assert client is not None and located.s3_key is not None
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(work_dir)
    target, fd = open_work_file(work_dir, located.filename, "download")
    meter = ProgressMeter("download", on_progress, expected_bytes=located.size, interval_s=progress_interval_s)
    try:
        # Written through our own 0600 descriptor: download_file would stage the data in a file with the
        # process umask's mode first.
        with os.fdopen(fd, "wb") as handle:
            client.download_fileobj(located.bucket, located.s3_key, handle, Callback=meter.add)
    except BaseException as exc:
        release_work_file(target)
        if isinstance(exc, Exception):
            raise RestoreRefused("download", f"downloading {located.where} failed: {exc}") from None
        raise
    meter.finish()
    return target, True

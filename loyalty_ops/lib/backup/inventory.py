"""What exists at a :class:`~loyalty_ops.lib.backup.location.BackupLocation`: the files in its backup
directory, the objects under its S3 prefix and the incomplete multipart uploads there.

The one inventory that backup (abandoned uploads), restore (backups on S3), retention and the morning
report all use. S3 listings go through boto3's paginators (``list_objects_v2``, ``list_multipart_uploads``),
so every page is followed. Only listing happens here; nothing is changed.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple

from loyalty_ops.lib.backup.location import BackupLocation

PAGE_SIZE = 1000  # S3's maximum per request


class LocalFile(NamedTuple):
    name: str  # a file directly in the backup directory
    size: int
    mtime: datetime


class RemoteObject(NamedTuple):
    key: str
    size: int
    last_modified: datetime


class MultipartUpload(NamedTuple):
    key: str
    upload_id: str
    initiated: datetime


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def scan_backup_dir(path: Path) -> tuple[LocalFile, ...]:
    """Regular files directly in the backup directory (no subdirectories, symlinks not followed), by name."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"backup directory {path} does not exist: check LOYALTY_BACKUP_DIR")
    out = []
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            out.append(LocalFile(entry.name, st.st_size, _utc(st.st_mtime)))
    return tuple(sorted(out, key=lambda f: f.name))


def list_local_files(location: BackupLocation) -> tuple[LocalFile, ...]:
    """The files in the location's backup directory (see :func:`scan_backup_dir`)."""
    return scan_backup_dir(location.backup_dir)


def _require_bucket(location: BackupLocation) -> str:
    if location.bucket is None:
        raise ValueError("no offsite copy is configured: set LOYALTY_S3_BUCKET (e.g. LOYALTY_S3_BUCKET=loyalty-backups)")
    return location.bucket


def list_objects(
    client: Any,
    location: BackupLocation,
    *,
    page_size: int = PAGE_SIZE,
    log: Callable[[str], None] = lambda _m: None,
    interval_s: float = 10.0,
) -> tuple[RemoteObject, ...]:
    """Every object under the location's prefix, all pages. Reports the count so far through ``log`` at
    most every ``interval_s`` seconds (100,000 keys take a hundred requests)."""
    bucket = _require_bucket(location)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=location.prefix, PaginationConfig={"PageSize": page_size}
    )
    out = []
    started = last = time.monotonic()
    for number, page in enumerate(pages, 1):
        for obj in page.get("Contents", ()):
            out.append(RemoteObject(obj["Key"], int(obj["Size"]), obj["LastModified"]))
        now = time.monotonic()
        if now - last >= interval_s:
            last = now
            log(f"listing {location.prefix_uri}: {len(out):,} objects in {number} pages, {now - started:.0f} s")
    return tuple(out)


def list_multipart_uploads(client: Any, location: BackupLocation, *, page_size: int = PAGE_SIZE) -> tuple[MultipartUpload, ...]:
    """Incomplete multipart uploads under the location's prefix, all pages."""
    bucket = _require_bucket(location)
    pages = client.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=location.prefix, PaginationConfig={"PageSize": page_size}
    )
    return tuple(
        MultipartUpload(upload["Key"], upload["UploadId"], upload["Initiated"])
        for page in pages
        for upload in page.get("Uploads", ())
    )

"""Listing what exists, for the planner: files in the backup directory, S3 objects and incomplete
multipart uploads under the prefix (paginated, 1000 per request), and log files.

Only listing happens here; nothing is changed.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from loyalty_ops.lib.backup.naming import normalize_prefix
from loyalty_ops.lib.retention.types import LocalFile, LogFile, MultipartUpload, RemoteObject

PAGE_SIZE = 1000


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def scan_backup_dir(path: Path) -> tuple[LocalFile, ...]:
    """Regular files directly in the backup directory (no subdirectories, symlinks not followed)."""
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


def scan_log_dir(path: Path) -> tuple[LogFile, ...]:
    """``*.log`` regular files under the log directory (recursively, like ``find logs/ -name '*.log'``),
    symlinks neither followed nor listed."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"log directory {path} does not exist: check LOYALTY_LOG_DIR")
    out = []
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in files:
            if not name.endswith(".log"):
                continue
            full = os.path.join(root, name)
            st = os.lstat(full)
            if not os.path.isfile(full) or os.path.islink(full):
                continue
            out.append(LogFile(os.path.relpath(full, path), st.st_size, _utc(st.st_mtime)))
    return tuple(sorted(out, key=lambda f: f.path))


def list_objects(
    client: Any, bucket: str, prefix: str, *, log: Callable[[str], None] = lambda _m: None, interval_s: float = 10.0
) -> tuple[RemoteObject, ...]:
    """Every object under ``prefix``, following continuation tokens (1000 keys per request). Reports the
    count so far through ``log`` at most every ``interval_s`` seconds."""
    prefix = normalize_prefix(prefix)
    out = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE_SIZE}
    started = last = time.monotonic()
    pages = 0
    while True:
        page = client.list_objects_v2(**kwargs)
        pages += 1
        for obj in page.get("Contents", ()):
            out.append(RemoteObject(obj["Key"], int(obj["Size"]), obj["LastModified"]))
        now = time.monotonic()
        if now - last >= interval_s:
            last = now
            log(f"listing s3://{bucket}/{prefix}: {len(out):,} objects in {pages} pages, {now - started:.0f} s")
        if not page.get("IsTruncated"):
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    return tuple(out)


def list_multipart_uploads(client: Any, bucket: str, prefix: str) -> tuple[MultipartUpload, ...]:
    """Incomplete multipart uploads under ``prefix``, following the key/upload-id markers."""
    prefix = normalize_prefix(prefix)
    out = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxUploads": PAGE_SIZE}
    while True:
        page = client.list_multipart_uploads(**kwargs)
        for upload in page.get("Uploads", ()):
            out.append(MultipartUpload(upload["Key"], upload["UploadId"], upload["Initiated"]))
        if not page.get("IsTruncated"):
            break
        kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
        kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")
    return tuple(out)


def resolve_log_dir(value: Optional[str]) -> Optional[Path]:
    if not value:
        return None
    return Path(value).expanduser().resolve()

"""Listing the log files retention looks after. Backup files, S3 objects and multipart uploads are
listed by the one backup inventory, ``loyalty_ops.lib.backup.inventory``.

Only listing happens here; nothing is changed.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from loyalty_ops.lib.retention.types import LogFile


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


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


def resolve_log_dir(value: Optional[str]) -> Optional[Path]:
    if not value:
        return None
    return Path(value).expanduser().resolve()

"""Temporary files and name claims in a backup directory that several runs may share.

Two runs can share a backup directory: a manual materialization next to the nightly one, or two
containers mounting the same volume. Process ids say nothing across PID namespaces, so "is this file
still in use?" is answered by a lock instead: every temporary file and every name claim is created
with an exclusive ``flock`` already held, and the lock is held for the file's whole life. The kernel
drops the lock when its holder dies (SIGKILL included), in whatever namespace it ran. Cleanup removes a
file only when it can take that lock itself.

Names (all hidden, none of them parse as a backup):

- ``.FILE.partial-PID-RANDOM.locked``: the data of ``FILE`` being written;
- ``.FILE.claim``: ``FILE`` is taken by a run in progress (created atomically, never replaced);
- ``.FILE.staging-PID-RANDOM``: a lock file for an instant before it gets its name (see ``create_locked``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from loyalty_ops.lib.backup.naming import MANIFEST_SUFFIX, PARTIAL_MARKER, SIDECAR_SUFFIX

LOCKED_SUFFIX = ".locked"
CLAIM_SUFFIX = ".claim"
STAGING_MARKER = ".staging-"
# A staging file exists for microseconds before it holds its lock; older than this and unlocked, it was
# left by a run killed at that instant.
STAGING_GRACE_S = 60.0


def locked_partial_path(final_path: Path) -> Path:
    """A unique temporary name for the data of ``final_path``, recognised by ``remove_stale_partials``."""
    final_path = Path(final_path)
    return final_path.with_name(f".{final_path.name}{PARTIAL_MARKER}{os.getpid()}-{secrets.token_hex(4)}{LOCKED_SUFFIX}")


def claim_lock_path(final_path: Path) -> Path:
    final_path = Path(final_path)
    return final_path.with_name(f".{final_path.name}{CLAIM_SUFFIX}")


def create_locked(path: Path, mode: int = 0o600) -> int:
    """Create ``path`` (never replacing anything) with an exclusive ``flock`` already held; returns its fd.

    The file is made under a staging name, locked, then hard-linked to ``path`` (``link`` fails when the
    name exists), so no other process ever sees ``path`` without its lock. Raises FileExistsError when
    ``path`` exists. Closing the fd releases the lock.
    """
    path = Path(path)
    staging = path.with_name(f"{path.name}{STAGING_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.link(staging, path)
    except BaseException:
        os.close(fd)
        raise
    finally:
        staging.unlink(missing_ok=True)
    return fd


@dataclass
class Claim:
    """A final name this run owns until ``release``: no other run can claim or publish it meanwhile."""

    path: Path
    lock_path: Path
    fd: int

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            _unlink_if_same(self.lock_path, self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1


def claim_path(final_path: Path, also_free: Iterable[Path] = ()) -> Optional[Claim]:
    """Claim ``final_path`` for this run; None when it is taken (it or one of ``also_free`` exists, or a
    live run holds its claim). A claim left by a killed run also answers None: the caller takes the next
    name, and cleanup removes the stale claim later."""
    final_path = Path(final_path)
    guarded = (final_path, *[Path(p) for p in also_free])
    if any(p.exists() for p in guarded):
        return None
    lock_path = claim_lock_path(final_path)
    try:
        fd = create_locked(lock_path)
    except FileExistsError:
        return None
    claim = Claim(final_path, lock_path, fd)
    # A run that held this claim may have published and released it between our check and our claim.
    if any(p.exists() for p in guarded):
        claim.release()
        return None
    return claim


def remove_stale_partials(directory: Path, *, staging_grace_s: float = STAGING_GRACE_S) -> list[Path]:
    """Remove temporary files and claims of runs that are gone; never one whose run is alive.

    "Gone" means nobody holds the file's lock, which is true across PID namespaces and containers.
    A run killed after writing its sidecar and manifest but before publishing its backup leaves them
    beside a stale claim: they are removed with the claim (never when the backup itself exists).
    Temporary files of the older, lock-less kind (``.partial-PID``, still made by restore work files)
    are removed only when nobody holds a lock on them and their process is gone from this namespace.
    """
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    now = time.time()
    for entry in os.scandir(directory):
        name = entry.name
        if not name.startswith(".") or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if name.endswith(CLAIM_SUFFIX) or (PARTIAL_MARKER in name and name.endswith(LOCKED_SUFFIX)):
            stale = True
        elif STAGING_MARKER in name:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > staging_grace_s
            except FileNotFoundError:
                continue
        elif PARTIAL_MARKER in name:
            pid_text = name.rsplit(PARTIAL_MARKER, 1)[-1]
            stale = pid_text.isdigit() and int(pid_text) != os.getpid() and not pid_alive(int(pid_text))
        else:
            continue
        leftovers = _unpublished_companions(path) if name.endswith(CLAIM_SUFFIX) else None
        if stale and _remove_if_unlocked(path, leftovers):
            removed.append(path)
    return sorted(removed)


def _unpublished_companions(claim: Path) -> Callable[[], None]:
    final = claim.with_name(claim.name[1 : -len(CLAIM_SUFFIX)])

    def _remove() -> None:
        if not final.exists():
            for suffix in (SIDECAR_SUFFIX, MANIFEST_SUFFIX):
                Path(f"{final}{suffix}").unlink(missing_ok=True)

    return _remove


def _remove_if_unlocked(path: Path, before_unlink: Optional[Callable[[], None]] = None) -> bool:
    """Unlink ``path`` only while holding its lock ourselves (so its owner is gone). True if removed.

    A file this process may not open or remove (another user's) is left alone: it cannot be judged.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EISDIR, errno.ELOOP, errno.EACCES, errno.EPERM):
            return False
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live run holds it, in this namespace or another
        if not _same_file(path, fd):
            return False
        if before_unlink is not None:
            before_unlink()
        return _unlink_if_same(path, fd)
    except PermissionError:
        return False
    finally:
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    """Is ``path`` still the file open as ``fd`` (not a newer file under the same name)?"""
    try:
        mine = os.fstat(fd)
        current = os.lstat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)


def _unlink_if_same(path: Path, fd: int) -> bool:
    if not _same_file(path, fd):
        return False
    path.unlink(missing_ok=True)
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``path`` through a locked temporary file, fsync it, and rename it into place."""
    path = Path(path)
    tmp = locked_partial_path(path)
    fd = create_locked(tmp, mode)
    try:
        with os.fdopen(os.dup(fd), "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # the lock (on fd) is held until the file has its name
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def write_bytes_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Like :func:`write_text_atomically`, for binary content (a backup's globals file)."""
    path = Path(path)
    tmp = locked_partial_path(path)
    fd = create_locked(tmp, mode)
    try:
        with os.fdopen(os.dup(fd), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def directory_bytes(path: Path) -> int:
    """The bytes of the files under ``path`` as they are now (files vanishing meanwhile count as 0)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total

"""Verify the backup file as it is stored, while it is being written: read it back from disk behind the writer.

The blocking checks must read the whole stored file (hash it, decompress it to its end, walk every data
block of the archive inside): a backup is verified only when what is on disk is restorable. Doing that after
the dump costs a second pass over the file on the critical path (about a fifth of the dump's time). Reading
the file back *while* it is written does the same work on the same bytes, beside the dump, on the CPU the
dump leaves free (on two cores the server's COPY holds one; pg_dump, the compressor and this pass share the
other): :class:`FileBeingWritten` is a read-only handle on the backup's temporary file whose ``read`` waits
for bytes the writer has written and then reads them from the file (``pread`` on its own descriptor, never
from the writer's memory), so what is hashed, decompressed and walked is exactly what is on disk. The same
walk yields the exact row counts (:mod:`loyalty_ops.lib.backup.archive`), so the archive is walked once.

The checks then hash the file on disk again: when it still has the SHA-256 this pass read, they report this
pass's verdicts; when it does not (changed, truncated or damaged since), they read the whole file again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class FileBeingWritten:
    """A read-only, blocking view of a file another thread is appending to.

    The writer calls :meth:`advance` with the number of bytes written so far and :meth:`close` when it is
    done (or :meth:`cancel` when it gives up). ``read(n)`` waits until the writer has written ``n`` bytes
    past the last read (fewer only at the end: each read costs its fixed overhead in the walk, so pieces
    stay whole), reads them from the file, and returns ``b''`` at the end: after :meth:`close`, once every
    written byte was read; after :meth:`cancel`, at once.
    """

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDONLY)
        self._cond = threading.Condition()
        self._written = 0
        self._closed = False
        self._cancelled = False
        self._pos = 0

    def advance(self, written: int) -> None:
        with self._cond:
            self._written = written
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self._closed = self._cancelled = True
            self._cond.notify()

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while (self._written - self._pos < n or n < 0) and not self._closed:
                self._cond.wait()
            if self._cancelled:
                return b""
            available = self._written - self._pos
        if available <= 0:
            return b""
        data = os.pread(self._fd, available if n < 0 else min(n, available), self._pos)
        self._pos += len(data)  # shorter than written (the file was cut meanwhile): the hash will say so
        return data

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ReadBack(Generic[T]):
    """Runs ``check(handle)`` on a thread over a :class:`FileBeingWritten` of ``path``; :meth:`result`
    returns what it returned (or raises what it raised) once the writer closed the file."""

    def __init__(self, path: Path, check: Callable[[FileBeingWritten], T]):
        self.handle = FileBeingWritten(path)
        self._outcome: list[tuple[str, Any]] = []
        self._thread = threading.Thread(target=self._run, args=(check,), name="backup-read-back", daemon=True)
        self._thread.start()

    def _run(self, check: Callable[[FileBeingWritten], T]) -> None:
        try:
            self._outcome.append(("ok", check(self.handle)))
        except BaseException as exc:  # re-raised by result()
            self._outcome.append(("error", exc))

    def result(self) -> T:
        self.handle.close()
        self._thread.join()
        self.handle.release()
        kind, value = self._outcome[0]
        if kind == "error":
            raise value
        return value

    def cancel(self) -> Optional[BaseException]:
        self.handle.cancel()
        self._thread.join()
        self.handle.release()
        kind, value = self._outcome[0] if self._outcome else ("ok", None)
        return value if kind == "error" else None

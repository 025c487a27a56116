"""The one-pass backup writer: dump stream -> compressor -> SHA-256 -> temporary file -> atomic rename.

A reader thread pulls the dump in whole 1 MB chunks so pg_dump never stalls on a full pipe; the calling
thread compresses, hashes and writes (ISA-L, zlib, zstd and hashlib release the GIL, so the two overlap).
pg_dump's pipe is widened to 1 MB (``F_SETPIPE_SZ``; Linux's default is 64 KB), and each chunk is filled
to its size before it is handed on: a read of a 64 KB pipe returns at most 64 KB, and every chunk costs
its fixed Python and numpy overhead in the compressor loop and the row-count walk, so 1 MB chunks cost a
sixteenth of 64 KB ones.
Two levers spare the database server: ``max_rate_bps`` makes the reader wait before each read once it is
ahead of the rate, so the pipe fills, pg_dump blocks on its write and the server's COPY waits on its
socket (back-pressure all the way to the table scan); ``nice`` runs the compressor in its own thread at a
lower CPU priority (Linux schedules threads one by one, so ``setpriority`` on the thread's id lowers that
thread only).
The file is created 0600 under a locked temporary name in the destination directory and fsynced (a
thread flushes it every 32 MB while it is written, so the last fsync finds little left); its
sidecar and manifest are written next; only then does it get its final name (a hard link, which never
replaces an existing file), so a file with a backup's name is always complete and never alone. Any
failure removes everything this run wrote.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import queue
import stat
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping, Optional, Protocol

from isal import isal_zlib

from loyalty_ops.lib.backup.integrity import lower_this_thread
from loyalty_ops.lib.backup.naming import SIDECAR_SUFFIX
from loyalty_ops.lib.backup.readback import FileBeingWritten, ReadBack
from loyalty_ops.lib.backup.tempfiles import (  # noqa: F401  (remove_stale_partials: used through this module)
    create_locked,
    fsync_directory,
    locked_partial_path,
    remove_stale_partials,
    write_text_atomically,
)
from loyalty_ops.lib.progress import ProgressMeter, ProgressSnapshot

CHUNK_BYTES = 1024 * 1024
QUEUE_DEPTH = 4  # chunks in flight: bounds memory at about (QUEUE_DEPTH + 2) * CHUNK_BYTES
FLUSH_EVERY_BYTES = 32 * 1024 * 1024  # the file is flushed to disk beside the dump every 32 MB written
PIPE_BYTES = 1024 * 1024  # pg_dump's pipe buffer (Linux allows unprivileged processes up to 1 MB by default)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
DEFAULT_LEVELS = {"gzip": 1, "zstd": 3}
ISAL_MAX_LEVEL = 3


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


def make_compressor(compression: str, level: Optional[int] = None, threads: int = 0) -> Compressor:
    """A streaming compressor whose output is a standard ``.gz`` (gzip -t, gunzip) or ``.zst`` file."""
    level = DEFAULT_LEVELS[compression] if level is None else level
    if compression == "gzip":
        if not 1 <= level <= 9:
            raise ValueError(f"gzip compression_level must be 1-9, got {level}")
        if level <= ISAL_MAX_LEVEL:
            # ISA-L's deflate writes the same gzip format several times faster than zlib at levels 1-3,
            # so the compressor keeps up with pg_dump on one core.
            return isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31)
        return zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip header and trailer
    if compression == "zstd":
        import zstandard

        if not 1 <= level <= 22:
            raise ValueError(f"zstd compression_level must be 1-22, got {level}")
        return zstandard.ZstdCompressor(level=level, threads=threads).compressobj()
    raise ValueError(f"compression must be 'gzip' or 'zstd', got {compression!r}")


class StreamAborted(RuntimeError):
    """The source stream failed or was cancelled; nothing was left on disk."""


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    raw_bytes: int
    written_bytes: int
    sha256: str
    duration_s: float
    throttled_s: float = 0.0  # seconds the reader waited to keep under the rate limit
    read_back: Any = None  # what ``read_back`` returned: the checks of the file as stored (readback.py)
    read_back_wait_s: float = 0.0  # how long the read-back still ran after the last byte was written


def sidecar_text(sha256: str, filename: str) -> str:
    """The line ``sha256sum -c`` reads: hash, two spaces, file name."""
    return f"{sha256}  {filename}\n"


class BackupWriteError(OSError):
    """Writing one of the backup's files failed (a full disk, say); nothing was left under a final name."""

    def __init__(self, step: str, path: Path, cause: OSError):
        super().__init__(cause.errno, f"{step} {path.name} failed: {cause.strerror or cause}")
        self.step = step
        self.path = path


def stream_to_file(
    source: IO[bytes],
    final_path: Path,
    *,
    compression: str = "gzip",
    level: Optional[int] = None,
    threads: int = 0,
    expected_raw_bytes: Optional[int] = None,
    on_progress: Optional[Callable[[ProgressSnapshot], None]] = None,
    progress_interval_s: float = 10.0,
    finish: Optional[Callable[[], None]] = None,
    on_block: Optional[Callable[[bytes], None]] = None,
    companions: Optional[Callable[[WrittenFile], Mapping[Path, str]]] = None,
    chunk_bytes: int = CHUNK_BYTES,
    on_raw: Optional[Callable[[bytes], None]] = None,
    max_rate_bps: Optional[float] = None,
    nice: int = 0,
    seal: Optional[Callable[[Compressor], Compressor]] = None,
    read_back: Optional[Callable[[FileBeingWritten], Any]] = None,
) -> WrittenFile:
    """Compress ``source`` into ``final_path`` (mode 0600) with its ``.sha256`` sidecar.

    ``finish`` runs after the source hits EOF and before anything is published; it should raise if the
    producer failed (for a dump: pg_dump's exit code). ``on_block`` sees every compressed block as it is
    written (a streamed offsite upload). ``companions(written)`` returns further files that belong to the
    backup (its manifest), as {path: text}. The sidecar and the companions are written first; the backup
    file gets its final name last, by a hard link that fails rather than replace an existing file. On any
    failure every one of them is removed again: a file under a backup's name always comes complete, with
    its sidecar and manifest beside it.

    ``on_raw`` sees every chunk of the source before compression (the row count). ``max_rate_bps`` caps
    the read rate of the source; the seconds spent waiting are in :attr:`WrittenFile.throttled_s`.
    ``nice`` (1-19) lowers the CPU priority of the thread that compresses, hashes and writes.
    ``seal`` wraps the compressor in a layer of the same shape after it (age encryption, encryption.py):
    what is hashed, written and uploaded is then the sealed stream.
    ``read_back(handle)`` runs on a thread of its own while the file is written, reading the file back
    from disk behind the writer (:mod:`loyalty_ops.lib.backup.readback`); its result is in
    :attr:`WrittenFile.read_back`, ready before the companions are written.
    """
    started = time.monotonic()
    final_path = Path(final_path)
    if final_path.exists():
        raise FileExistsError(f"{final_path} already exists; refusing to overwrite a backup")
    compressor = make_compressor(compression, level, threads)
    if seal is not None:
        compressor = seal(compressor)
    digest = hashlib.sha256()
    label = f"dump (rate limited to {max_rate_bps / 1e6:g} MB/s)" if max_rate_bps else "dump"
    meter = ProgressMeter(label, on_progress, expected_bytes=expected_raw_bytes, interval_s=progress_interval_s)
    chunks: "queue.Queue[object]" = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    _EOF = object()
    throttle = RateLimit(max_rate_bps, stop) if max_rate_bps else None
    widen_pipe(source)

    def _read() -> None:
        try:
            while not stop.is_set():
                if throttle is not None:
                    throttle.wait_for(chunk_bytes)
                chunk = read_chunk(source, chunk_bytes)
                if not chunk:
                    break
                if throttle is not None:
                    throttle.done(len(chunk))
                chunks.put(chunk)
            chunks.put(_EOF)
        except BaseException as exc:  # surfaced on the writing thread
            chunks.put(exc)

    tmp_path = locked_partial_path(final_path)
    # The lock on this descriptor marks the temporary file as live (see tempfiles); it is held until the
    # file has its final name or is removed.
    with _step("creating the backup file", tmp_path):
        fd = create_locked(tmp_path)
    out = os.fdopen(fd, "wb", buffering=0)
    flusher = _Flusher(fd)
    reader = threading.Thread(target=_read, name="dump-reader", daemon=True)
    written = 0
    created: list[Path] = []  # files under final names, removed again on failure
    checking: Optional[ReadBack] = None

    def _compress() -> int:
        done = 0
        with _step("writing the backup data to", tmp_path):
            while True:
                item = chunks.get()
                if item is _EOF:
                    break
                if isinstance(item, BaseException):
                    raise StreamAborted(f"reading the dump stream failed: {item}") from item
                meter.add(len(item))  # type: ignore[arg-type]
                if on_raw is not None:
                    on_raw(item)  # type: ignore[arg-type]
                block = compressor.compress(item)  # type: ignore[arg-type]
                if block:
                    digest.update(block)
                    _write_all(out, block)
                    done += len(block)
                    flusher.written(done)
                    if checking is not None:
                        checking.handle.advance(done)
                    if on_block is not None:
                        on_block(block)
            tail = compressor.flush()
            digest.update(tail)
            _write_all(out, tail)
            done += len(tail)
            if checking is not None:
                checking.handle.advance(done)
            if on_block is not None and tail:
                on_block(tail)
        return done

    try:
        if read_back is not None:
            checking = ReadBack(tmp_path, read_back)
        reader.start()
        written = run_at_lower_priority(_compress, nice, "backup-compressor") if nice else _compress()
        if finish is not None:
            finish()
        waited = time.monotonic()
        checked = checking.result() if checking is not None else None
        waited = time.monotonic() - waited
        checking = None
        with _step("writing the backup data to", tmp_path):
            flusher.close()
            os.fsync(out.fileno())
        result = WrittenFile(
            final_path, meter.done_bytes, written, digest.hexdigest(), time.monotonic() - started,
            throttle.waited_s if throttle is not None else 0.0, checked, waited if checked is not None else 0.0,
        )
        sidecar = final_path.with_name(final_path.name + SIDECAR_SUFFIX)
        with _step("writing the checksum sidecar", sidecar):
            write_text_atomically(sidecar, sidecar_text(result.sha256, final_path.name))
            created.append(sidecar)
        for path, text in (companions(result) if companions is not None else {}).items():
            with _step("writing", path):
                write_text_atomically(path, text)
                created.append(path)
        with _step("publishing the backup as", final_path):
            os.link(tmp_path, final_path)  # FileExistsError instead of replacing another run's backup
            created.append(final_path)
            tmp_path.unlink()
            fsync_directory(final_path.parent)
    except BaseException:
        stop.set()
        drain_queue(chunks)
        if checking is not None:
            checking.cancel()
        for path in reversed(created):
            path.unlink(missing_ok=True)
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        flusher.close(raise_error=False)  # before the descriptor it flushes is closed
        out.close()
    meter.finish()
    return result


def widen_pipe(source: object, size: int = PIPE_BYTES) -> bool:
    """Grow the pipe ``source`` reads from to ``size`` bytes (Linux ``F_SETPIPE_SZ``); True when it did.

    The writer (pg_dump) then blocks a sixteenth as often, and each read returns up to 1 MB. Not a pipe,
    not Linux, or over the system's ``fs.pipe-max-size``: the pipe stays as it is, which is only slower.
    """
    try:
        fd = source.fileno()  # type: ignore[attr-defined]
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        fcntl.fcntl(fd, F_SETPIPE_SZ, size)
        return True
    except (AttributeError, OSError, ValueError):
        return False


def read_chunk(source: IO[bytes], size: int) -> bytes:
    """Read until ``size`` bytes or the end of the stream (b'' there): a pipe returns what it holds, often
    much less. A file or pipe (``io.FileIO``, buffered streams) is read into one buffer, so nothing is
    copied twice; any other stream (the container runner's) with ``read``."""
    if not isinstance(source, (io.FileIO, io.BufferedIOBase)):
        parts, got = [], 0
        while got < size and (part := source.read(size - got)):
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    buf = bytearray(size)
    got = 0
    with memoryview(buf) as view:
        while got < size:
            done = source.readinto(view[got:])
            if not done:
                break
            got += done
    if got < size:
        del buf[got:]
    return buf  # type: ignore[return-value]  (a bytearray: compressors, hashlib and the walk take it as bytes)


class _Flusher:
    """``fdatasync`` the file on a thread of its own every ``every`` bytes written, so the ``fsync`` that must
    come before the backup gets its name finds little left to write (about 0.2 s per 100 MB here, at the
    end of the dump, otherwise)."""

    def __init__(self, fd: int, every: int = FLUSH_EVERY_BYTES):
        self._fd = fd
        self._every = every
        self._next = every
        self._wake = threading.Event()
        self._stopping = False
        self.error: Optional[OSError] = None
        self._thread = threading.Thread(target=self._run, name="backup-flusher", daemon=True)
        self._thread.start()

    def written(self, done: int) -> None:
        if done >= self._next:
            self._next = done + self._every
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:  # raised by close() on the writing thread (a full disk, EIO)
                self.error = exc
                return

    def close(self, *, raise_error: bool = True) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()
        if raise_error and self.error is not None:
            raise self.error


class RateLimit:
    """Keeps a reader at or under ``rate_bps`` on average (a token bucket with one second of burst)."""

    def __init__(self, rate_bps: float, stop: Optional[threading.Event] = None, clock=time.monotonic):
        if rate_bps <= 0:
            raise ValueError(f"the rate limit must be positive, got {rate_bps}")
        self.rate_bps = float(rate_bps)
        self.waited_s = 0.0
        self._stop = stop or threading.Event()
        self._clock = clock
        self._start = clock()
        self._done = 0

    def wait_for(self, nbytes: int) -> None:
        """Wait until reading ``nbytes`` more keeps the average at the rate (one second of burst allowed)."""
        due = self._start + (self._done + nbytes) / self.rate_bps - 1.0
        delay = due - self._clock()
        if delay > 0:
            self.waited_s += delay
            self._stop.wait(delay)

    def done(self, nbytes: int) -> None:
        self._done += nbytes


def run_at_lower_priority(work: Callable[[], int], nice: int, name: str) -> int:
    """Run ``work`` in its own thread whose CPU priority is lowered by ``nice`` (1-19); return its result.

    Only that thread is lowered: the calling thread (Dagster's step, its heartbeats) keeps its priority.
    Where thread priorities cannot be set (not Linux), ``work`` runs at normal priority.
    """
    outcome: list = []

    def _run() -> None:
        try:
            lower_this_thread(nice)
            outcome.append(("ok", work()))
        except BaseException as exc:  # re-raised on the calling thread
            outcome.append(("error", exc))

    thread = threading.Thread(target=_run, name=name, daemon=True)
    thread.start()
    thread.join()
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def _write_all(out, data: bytes) -> None:
    """An unbuffered write may be short (a filling disk does that before it says ENOSPC): write the rest."""
    view = memoryview(data)
    while view:
        done = out.write(view)
        view = view[done:]


@contextmanager
def _step(step: str, path: Path) -> Iterator[None]:
    """Name the step and file in an OS error (ENOSPC, EIO, ...), so the run says what could not be written."""
    try:
        yield
    except BackupWriteError:
        raise
    except FileExistsError:
        raise
    except OSError as exc:
        raise BackupWriteError(step, path, exc) from exc


def drain_queue(chunks: "queue.Queue[object]") -> None:
    """Empty a bounded queue so a producer thread blocked on ``put`` can notice it should stop."""
    try:
        while True:
            chunks.get_nowait()
    except queue.Empty:
        pass

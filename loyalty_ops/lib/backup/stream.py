"""The one-pass backup writer: dump stream -> compressor -> SHA-256 -> temporary file -> atomic rename.

A reader thread pulls the dump in large chunks so pg_dump never stalls on a full pipe; the calling
thread compresses, hashes and writes (zlib, zstd and hashlib release the GIL, so the two overlap).
The file is created 0600 under a temporary name in the destination directory, fsynced, and only then
renamed to its final name, so a file with a backup's name is always complete. Any failure removes the
temporary file.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional, Protocol

from isal import isal_zlib

from loyalty_ops.lib.backup.naming import PARTIAL_MARKER, SIDECAR_SUFFIX
from loyalty_ops.lib.progress import ProgressMeter, ProgressSnapshot

CHUNK_BYTES = 1024 * 1024
QUEUE_DEPTH = 8  # chunks in flight: bounds memory at about (QUEUE_DEPTH + 2) * CHUNK_BYTES
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


def partial_path_for(final_path: Path) -> Path:
    return final_path.with_name(f".{final_path.name}{PARTIAL_MARKER}{os.getpid()}")


def remove_stale_partials(directory: Path) -> list[Path]:
    """Remove temporary files that a killed earlier run left behind (their process is gone)."""
    removed = []
    if not directory.is_dir():
        return removed
    for candidate in directory.glob(f".*{PARTIAL_MARKER}*"):
        pid_text = candidate.name.rsplit(PARTIAL_MARKER, 1)[-1]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _pid_alive(pid: int) -> bool:
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
    tmp = partial_path_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sidecar_text(sha256: str, filename: str) -> str:
    """The line ``sha256sum -c`` reads: hash, two spaces, file name."""
    return f"{sha256}  {filename}\n"


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
    chunk_bytes: int = CHUNK_BYTES,
) -> WrittenFile:
    """Compress ``source`` into ``final_path`` (mode 0600) and write the ``.sha256`` sidecar.

    ``finish`` runs after the source hits EOF and before the rename; it should raise if the producer
    failed (for a dump: pg_dump's exit code), in which case nothing is left on disk. ``on_block`` sees
    every compressed block as it is written (for a streamed offsite upload).
    """
    started = time.monotonic()
    final_path = Path(final_path)
    if final_path.exists():
        raise FileExistsError(f"{final_path} already exists; refusing to overwrite a backup")
    compressor = make_compressor(compression, level, threads)
    digest = hashlib.sha256()
    meter = ProgressMeter("dump", on_progress, expected_bytes=expected_raw_bytes, interval_s=progress_interval_s)
    chunks: "queue.Queue[object]" = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()
    _EOF = object()

    def _read() -> None:
        try:
            while not stop.is_set():
                chunk = source.read(chunk_bytes)
                if not chunk:
                    break
                chunks.put(chunk)
            chunks.put(_EOF)
        except BaseException as exc:  # surfaced on the writing thread
            chunks.put(exc)

    tmp_path = partial_path_for(final_path)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    reader = threading.Thread(target=_read, name="dump-reader", daemon=True)
    written = 0
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            reader.start()
            while True:
                item = chunks.get()
                if item is _EOF:
                    break
                if isinstance(item, BaseException):
                    raise StreamAborted(f"reading the dump stream failed: {item}") from item
                meter.add(len(item))  # type: ignore[arg-type]
                block = compressor.compress(item)  # type: ignore[arg-type]
                if block:
                    digest.update(block)
                    out.write(block)
                    written += len(block)
                    if on_block is not None:
                        on_block(block)
            tail = compressor.flush()
            digest.update(tail)
            out.write(tail)
            written += len(tail)
            if on_block is not None and tail:
                on_block(tail)
            if finish is not None:
                finish()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        write_text_atomically(final_path.with_name(final_path.name + SIDECAR_SUFFIX), sidecar_text(sha, final_path.name))
        os.replace(tmp_path, final_path)
        fsync_directory(final_path.parent)
    except BaseException:
        stop.set()
        drain_queue(chunks)
        tmp_path.unlink(missing_ok=True)
        final_path.with_name(final_path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
        raise
    meter.finish()
    return WrittenFile(final_path, meter.done_bytes, written, sha, time.monotonic() - started)


def drain_queue(chunks: "queue.Queue[object]") -> None:
    """Empty a bounded queue so a producer thread blocked on ``put`` can notice it should stop."""
    try:
        while True:
            chunks.get_nowait()
    except queue.Empty:
        pass

"""Turning a fetched backup file into a checked archive, in one read of the file.

:func:`prepare_archive` reads the compressed (and, for ``.age`` files, encrypted) file once: it hashes it,
decompresses it into a private temporary file (mode 0600; ``pg_restore -j`` cannot read standard input) and
compares the hash before anyone restores from it. A mismatch or a corrupt stream removes the temporary file
and refuses the restore. A ``jobs: 1`` restore needs no temporary copy: :func:`verify_archive` proves the
file (checksum, and the whole archive to its last data block) in a first pass that writes nothing, and
:func:`stream_archive` decompresses it again into pg_restore's standard input, hashing it again so a file
changed in between is caught.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from loyalty_ops.lib.backup.archive import ArchiveFormatError, ArchiveReader
from loyalty_ops.lib.backup.encryption import AGE_SUFFIX, AgeStream
from loyalty_ops.lib.backup.integrity import (
    CUSTOM_FORMAT_MAGIC,
    StreamDecompressor,
    compression_of,
)
from loyalty_ops.lib.backup.stream import drain_queue, remove_stale_partials
from loyalty_ops.lib.progress import ProgressMeter
from loyalty_ops.lib.restore.errors import (
    ChecksumMismatch,
    MissingKey,
    RestoreRefused,
    RestoreStepError,
)
from loyalty_ops.lib.restore.source import (
    MISSING_KEY_HINT,
    READ_BYTES,
    ProgressFn,
    open_work_file,
    release_work_file,
)


@dataclass(frozen=True)
class PreparedArchive:
    path: Optional[Path]  # the decompressed custom-format archive, mode 0600; None when it is streamed
    raw_bytes: int
    compressed_bytes: int
    sha256: str
    duration_s: float
    source: Optional[Path] = None  # the compressed file a streamed archive is read from (again)
    compression: str = ""
    data_blocks: int = 0  # data blocks the verification walked to their end markers (streamed archives)
    identities: Optional[tuple] = field(default=None, repr=False)  # to decrypt an ``.age`` source again (streamed)

    @property
    def streamed(self) -> bool:
        return self.path is None


class ArchiveChanged(RestoreStepError):
    """The compressed file changed between its verification and the pass that streamed it into pg_restore."""


def _read_decompressed(
    compressed: Path, name: str, compression: str, sink: Callable[[bytes], None], meter: ProgressMeter,
    identities: Optional[tuple] = None,
) -> tuple[int, str, Optional[str], bytes]:
    """Read ``compressed`` once: hash every byte on a reader thread, decompress on this one, give each
    decompressed block to ``sink``. Returns (decompressed bytes, SHA-256, the first stream or format error,
    the first bytes).

    A ``ValueError`` from the decompressor or the sink (a corrupt stream, a malformed archive) does not stop
    the read: hashing goes on to the end, because the verdict on the checksum comes first. Any other error of
    the sink (a full disk, a closed pipe) stops it and is raised.
    """
    digest = hashlib.sha256()
    chunks: "queue.Queue[object]" = queue.Queue(maxsize=4)
    stop = threading.Event()
    eof = object()

    def _read() -> None:
        try:
            with open(compressed, "rb") as handle:
                for block in iter(lambda: handle.read(READ_BYTES), b""):
                    digest.update(block)
                    if stop.is_set():
                        continue  # keep hashing: the verdict on the checksum comes first
                    chunks.put(block)
            chunks.put(eof)
        except BaseException as exc:
            chunks.put(exc)

    reader = threading.Thread(target=_read, name="archive-reader", daemon=True)
    decomp = StreamDecompressor(compression)
    # An encrypted (.age) file is decrypted before it is decompressed; the checksum is of the file as stored.
    unseal = AgeStream(identities=list(identities)) if name.endswith(AGE_SUFFIX) and identities else None
    if name.endswith(AGE_SUFFIX) and unseal is None:
        raise MissingKey("decrypt", f"{name} is encrypted: {MISSING_KEY_HINT}")
    stream_error: Optional[str] = None
    raw = 0
    head = b""
    try:
        reader.start()
        while True:
            item = chunks.get()
            if item is eof:
                break
            if isinstance(item, BaseException):
                raise RestoreRefused("verify checksum", f"reading {name} failed: {item}")
            meter.add(len(item))  # type: ignore[arg-type]
            if stream_error:
                continue
            try:
                block = decomp.decompress(unseal.compress(item) if unseal is not None else item)  # type: ignore[arg-type]
                if block:
                    if len(head) < len(CUSTOM_FORMAT_MAGIC):
                        head += block[: len(CUSTOM_FORMAT_MAGIC)]
                    sink(block)
                    raw += len(block)
            except ValueError as exc:
                stream_error = str(exc)
                stop.set()  # the reader only hashes from now on; keep taking chunks until its EOF
        reader.join()
        if unseal is not None and not stream_error:
            try:
                block = decomp.decompress(unseal.flush())
                if block:
                    if len(head) < len(CUSTOM_FORMAT_MAGIC):
                        head += block[: len(CUSTOM_FORMAT_MAGIC)]
                    sink(block)
                    raw += len(block)
            except ValueError as exc:
                stream_error = str(exc)
    except BaseException:
        stop.set()
        drain_queue(chunks)
        raise
    finally:
        if unseal is not None:
            unseal.abort()
    return raw, digest.hexdigest(), stream_error or decomp.truncation_error(), head


def _judge(name: str, expected_sha256: str, actual: str, stream_error: Optional[str], raw: int) -> None:
    """The checksum first, then the stream: a corrupted file is refused for its checksum."""
    if actual != expected_sha256:
        extra = f" (and {stream_error})" if stream_error else ""
        raise ChecksumMismatch(
            "verify checksum",
            f"{name} hashes to {actual} but its recorded SHA-256 is {expected_sha256}: the file is "
            f"corrupt or was changed{extra}; it will not be restored",
        )
    if stream_error:
        raise RestoreRefused(
            "decompress",
            f"{name}: {stream_error} after {raw} decompressed bytes (its checksum matches, so it was "
            "written this way); it cannot be restored",
        )


def _compression(name: str) -> str:
    try:
        return compression_of(Path(name))
    except ValueError as exc:
        raise RestoreRefused("verify checksum", str(exc)) from None


def prepare_archive(
    compressed: Path,
    expected_sha256: str,
    work_dir: Path,
    *,
    filename: Optional[str] = None,
    on_progress: ProgressFn = None,
    progress_interval_s: float = 10.0,
    identities: Optional[tuple] = None,
) -> PreparedArchive:
    """Hash and decompress ``compressed`` in one pass into a 0600 temporary file; refuse on any mismatch.
    An ``.age`` file is decrypted on the way with ``identities`` (refused without them).

    A reader thread reads and hashes while this thread decompresses and writes (zlib, zstd and hashlib
    release the GIL, so the two overlap). The checksum is judged first: a corrupted file is refused for
    its checksum even when the corruption also breaks decompression.
    """
    started = time.monotonic()
    compressed = Path(compressed)
    name = filename or compressed.name
    compression = _compression(name)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(work_dir)
    size = compressed.stat().st_size
    meter = ProgressMeter("verify + decompress", on_progress, expected_bytes=size, interval_s=progress_interval_s)
    out_path, fd = open_work_file(work_dir, name, "archive")
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:

            def write_all(block: bytes) -> None:
                # An unbuffered write may write only part of a block (a filesystem filling up); the next write
                # then reports the error. Never drop the rest silently.
                view = memoryview(block)
                while view:
                    view = view[out.write(view) or 0:]

            raw, actual, stream_error, head = _read_decompressed(compressed, name, compression, write_all, meter, identities)
            written = os.fstat(out.fileno()).st_size
        if written != raw and not stream_error:
            raise OSError(f"{written} of {raw} bytes reached the disk")
        _judge(name, expected_sha256, actual, stream_error, raw)
        if not head.startswith(CUSTOM_FORMAT_MAGIC):
            raise RestoreRefused("decompress", f"{name} is not a pg_dump custom-format archive")
    except OSError as exc:  # the temporary archive could not be written (a full disk): nothing restored yet
        release_work_file(out_path)
        raise RestoreRefused(
            "decompress",
            f"writing the decompressed archive of {name} in {work_dir} failed: {exc.strerror or exc}; free space "
            "there, point LOYALTY_RESTORE_TMP_DIR at a larger filesystem, or restore with jobs: 1 (no temporary copy)",
        ) from None
    except BaseException:
        release_work_file(out_path)
        raise
    meter.finish()
    return PreparedArchive(out_path, raw, size, actual, time.monotonic() - started, source=compressed, compression=compression)


def verify_archive(
    compressed: Path,
    expected_sha256: str,
    *,
    filename: Optional[str] = None,
    on_progress: ProgressFn = None,
    progress_interval_s: float = 10.0,
    identities: Optional[tuple] = None,
) -> PreparedArchive:
    """The first pass of a streamed restore: hash ``compressed``, decompress it and read the whole archive
    (header, table of contents, every data block to its end marker) without writing anything. Refuses on a
    checksum mismatch, a corrupt stream or an incomplete archive, like :func:`prepare_archive`, and more:
    a cut archive is refused here, before any database is created.
    """
    started = time.monotonic()
    compressed = Path(compressed)
    name = filename or compressed.name
    compression = _compression(name)
    size = compressed.stat().st_size
    meter = ProgressMeter("verify checksum + archive", on_progress, expected_bytes=size, interval_s=progress_interval_s)
    reader = ArchiveReader()
    archive_errors: list[str] = []

    def _feed(block: bytes) -> None:
        if not archive_errors:
            try:
                reader.feed(block)
            except ArchiveFormatError as exc:
                archive_errors.append(str(exc))

    raw, actual, stream_error, head = _read_decompressed(compressed, name, compression, _feed, meter, identities)
    _judge(name, expected_sha256, actual, stream_error, raw)
    if not head.startswith(CUSTOM_FORMAT_MAGIC):
        raise RestoreRefused("decompress", f"{name} is not a pg_dump custom-format archive")
    try:
        if archive_errors:
            raise ArchiveFormatError(archive_errors[0])
        summary = reader.finish()
    except ArchiveFormatError as exc:
        raise RestoreRefused(
            "verify archive",
            f"{name} is not a complete pg_dump archive: {exc} (its checksum matches, so it was written this way); "
            "it cannot be restored",
        ) from None
    meter.finish()
    return PreparedArchive(
        None, raw, size, actual, time.monotonic() - started, source=compressed, compression=compression,
        data_blocks=summary.data_blocks, identities=identities,
    )


def stream_archive(archive: PreparedArchive, write: Callable[[bytes], None], *, filename: str = "") -> int:
    """The second pass of a streamed restore: decompress the verified file again into ``write`` (pg_restore's
    standard input), hashing it again. Raises :class:`ArchiveChanged` when the bytes streamed are not the
    bytes verified (the file changed in between): the caller must then discard what was restored."""
    assert archive.source is not None, "only a verified archive is streamed"
    name = filename or archive.source.name
    meter = ProgressMeter("stream into pg_restore", None, expected_bytes=archive.compressed_bytes)
    raw, actual, stream_error, _ = _read_decompressed(
        archive.source, name, archive.compression, write, meter, archive.identities
    )
    if actual != archive.sha256 or stream_error or raw != archive.raw_bytes:
        raise ArchiveChanged(
            "pg_restore",
            f"{name} changed while it was being restored: it hashed to {archive.sha256} when verified and to {actual} "
            f"when streamed{' (' + stream_error + ')' if stream_error else ''}; what was restored is discarded",
            touched=True,
        )
    return raw

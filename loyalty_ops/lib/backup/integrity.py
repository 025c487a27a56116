"""Integrity checks of a backup file on disk, each independent of how the file was written.

- :func:`verify_compressed_stream`: the compressed stream is valid to its end (what ``gunzip -t`` /
  ``zstd -t`` check) and holds a PostgreSQL custom-format archive.
- :func:`inspect_archive`: one read of the file that hashes it, decompresses it to the end, reads the whole
  archive inside (every data block the TOC promises, complete to its end marker, nothing after the last;
  :mod:`loyalty_ops.lib.backup.archive`) and feeds ``pg_restore --list``.
  Given a ``source`` (``readback.FileBeingWritten``), it reads the file as it is being written.
- :func:`list_toc`: ``pg_restore --list`` of the file, fed its header and table of contents (:class:`TocListing`).
- :func:`file_sha256`: the hash of the bytes on disk, to compare with the one computed while writing.
- :func:`size_is_plausible`: not empty, and not under a fraction of the previous good backup.
- :func:`missing_from_toc`: every source table has its TABLE and TABLE DATA entries in ``pg_restore --list``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Optional

from isal import isal_zlib

from loyalty_ops.lib.backup.archive import ArchiveFormatError, ArchiveReader, ArchiveSummary
from loyalty_ops.lib.pg.catalog import TableRef

READ_BYTES = 1024 * 1024
CUSTOM_FORMAT_MAGIC = b"PGDMP"


@dataclass(frozen=True)
class StreamVerdict:
    ok: bool
    raw_bytes: int
    message: str


def compression_of(path: Path) -> str:
    name = Path(path).name
    if name.endswith(".age"):  # encrypted after compression: the compression is the suffix before
        name = name[: -len(".age")]
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".zst"):
        return "zstd"
    raise ValueError(f"{name}: not a .dump.gz or .dump.zst backup")


class StreamDecompressor:
    """Decompresses a backup chunk by chunk: gzip (ISA-L; concatenated members too) or zstd (several frames).

    ``decompress`` raises ValueError on a corrupt stream; ``complete`` says whether the last member or
    frame ended properly (False for a truncated file).
    """

    def __init__(self, compression: str):
        if compression not in ("gzip", "zstd"):
            raise ValueError(f"unknown compression {compression!r}")
        self.compression = compression
        self._new()

    def _new(self) -> None:
        if self.compression == "gzip":
            self._obj = isal_zlib.decompressobj(31)
        else:
            import zstandard

            self._obj = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes) -> bytes:
        try:
            out = self._obj.decompress(data)
            while self._obj.eof and self._obj.unused_data:
                rest = self._obj.unused_data  # another member/frame follows (as `cat a.gz b.gz` makes)
                self._new()
                out += self._obj.decompress(rest)
        except Exception as exc:  # isal_zlib.error / zstandard.ZstdError
            raise ValueError(f"{self.compression} stream is corrupt: {exc}") from None
        return out

    @property
    def complete(self) -> bool:
        return bool(self._obj.eof)

    def truncation_error(self) -> Optional[str]:
        if self.complete:
            return None
        return f"{self.compression} stream ends early: the file is truncated"


def iter_decompressed(path: Path, compression: Optional[str] = None) -> Iterator[bytes]:
    """Yield the decompressed archive in chunks; raise ValueError if the stream is corrupt or truncated."""
    decomp = StreamDecompressor(compression or compression_of(path))
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(READ_BYTES), b""):
            out = decomp.decompress(block)
            if out:
                yield out
    error = decomp.truncation_error()
    if error:
        raise ValueError(error)


def verify_compressed_stream(path: Path) -> StreamVerdict:
    """Decompress the whole file (as ``gunzip -t`` does) and check it starts like a custom-format archive."""
    path = Path(path)
    if not path.exists():
        return StreamVerdict(False, 0, f"{path} does not exist")
    if path.stat().st_size == 0:
        return StreamVerdict(False, 0, f"{path.name} is empty (0 bytes)")
    raw = 0
    head = b""
    try:
        for block in iter_decompressed(path):
            if len(head) < len(CUSTOM_FORMAT_MAGIC):
                head += block[: len(CUSTOM_FORMAT_MAGIC)]
            raw += len(block)
    except ValueError as exc:
        return StreamVerdict(False, raw, f"{path.name}: {exc} after {raw} decompressed bytes")
    if not head.startswith(CUSTOM_FORMAT_MAGIC):
        return StreamVerdict(False, raw, f"{path.name} decompresses but is not a pg_dump custom-format archive")
    return StreamVerdict(True, raw, f"{path.name}: compressed stream valid to the end, {raw} bytes of archive")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(READ_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(path: Path) -> Optional[str]:
    """The hash stored in ``FILE.sha256`` (``sha256sum`` format), or None when there is no sidecar."""
    sidecar = Path(str(path) + ".sha256")
    if not sidecar.exists():
        return None
    text = sidecar.read_text(encoding="utf-8").strip()
    return text.split()[0].lower() if text else None


@dataclass(frozen=True)
class SizeVerdict:
    ok: bool
    message: str
    ratio: Optional[float]


def size_is_plausible(size: int, previous_size: Optional[int], min_ratio: float = 0.5) -> SizeVerdict:
    """Catch the commonest silent failure: an empty or truncated dump reported as success."""
    if size <= 0:
        return SizeVerdict(False, "the backup file is empty (0 bytes)", None)
    if not previous_size:
        return SizeVerdict(True, f"{size} bytes; no previous successful backup to compare with", None)
    ratio = size / previous_size
    if ratio < min_ratio:
        return SizeVerdict(
            False,
            f"{size} bytes is {ratio:.0%} of the previous successful backup ({previous_size} bytes), "
            f"under the {min_ratio:.0%} floor: the dump may be truncated or tables may be missing",
            ratio,
        )
    return SizeVerdict(True, f"{size} bytes, {ratio:.0%} of the previous successful backup", ratio)


def missing_from_toc(toc_text: str, tables: Iterable[TableRef]) -> list[str]:
    """Tables without a ``TABLE`` entry (and, for ordinary tables, a ``TABLE DATA`` entry) in the TOC.

    ``pg_restore --list`` prints names unquoted (``TABLE public my table owner``), so each expected entry
    is matched as a whole line suffix built from the catalog's schema, name and owner.
    """
    entries: set[str] = set()
    for line in toc_text.splitlines():
        if not line or line.startswith(";"):
            continue
        _, _, rest = line.partition("; ")
        # rest: "<catalog oid> <oid> <DESC> <schema> <name> <owner>"
        fields = rest.split(" ", 2)
        if len(fields) == 3:
            entries.add(fields[2])
    missing = []
    for table in tables:
        if f"TABLE {table.schema} {table.name} {table.owner}" not in entries:
            missing.append(f"{table.qualified} (no TABLE entry)")
        elif table.kind == "r" and f"TABLE DATA {table.schema} {table.name} {table.owner}" not in entries:
            missing.append(f"{table.qualified} (no TABLE DATA entry)")
    return missing


@dataclass(frozen=True)
class ArchiveInspection:
    """Everything one read of a backup file tells: its hash, whether the stream is valid, whether the archive
    inside is complete (``archive``: the summary, or None with ``archive_error``), and its TOC."""

    sha256: str
    file_bytes: int
    stream: StreamVerdict
    toc_text: Optional[str]
    toc_error: Optional[str]
    archive: Optional[ArchiveSummary] = None
    archive_error: Optional[str] = None
    seconds: float = 0.0


class _Worker:
    """A thread that consumes blocks from a bounded queue (hashing, or walking the archive).

    hashlib, ISA-L and numpy release the GIL, so hashing, decompressing and walking overlap on two cores.
    """

    def __init__(self, name: str, consume: Callable[[bytes], None], *, nice: int = 0):
        self.queue: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=4)
        self.error: Optional[BaseException] = None
        self._consume = consume
        self._nice = nice
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._nice:
            lower_this_thread(self._nice)
        while (block := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self._consume(block)
                except BaseException as exc:  # reported by the caller; keep draining so put() never blocks
                    self.error = exc

    def put(self, block: bytes) -> None:
        self.queue.put(block)

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join()


def lower_this_thread(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux schedules threads one by one); where
    that is not possible, nothing changes."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
    except (AttributeError, OSError):
        pass


def inspect_archive(
    path: Path, toc_process=None, *, read_archive: bool = True, unseal=None, source: Optional[IO[bytes]] = None,
    compression: Optional[str] = None, read_bytes: int = READ_BYTES, nice: int = 0,
) -> ArchiveInspection:
    """Hash the file, decompress it to the end, read the whole archive and feed ``pg_restore --list``, in one read.

    ``source`` reads the file through another handle (``readback.FileBeingWritten``: the file as it is
    being written), with its ``compression`` given; ``read_bytes`` is the size of each read; ``nice``
    lowers the CPU priority of the hashing and walking threads (``LOYALTY_BACKUP_NICE``).

    ``unseal`` (an encrypted ``.age`` file) is a decrypting stage of the compressor's shape
    (``encryption.AgeStream``) put between the file and the decompressor; a file that does not decrypt to
    its end fails the stream check.

    ``toc_process`` is a started tool process (``pg_restore --list`` reading stdin) or None.
    ``read_archive=False`` skips the archive walk (only for measuring what it costs: the benchmark).
    """
    started = time.monotonic()
    path = Path(path)
    digest = hashlib.sha256()
    reader = ArchiveReader()
    hasher = _Worker("archive-hash", digest.update, nice=nice)
    walker = _Worker("archive-walk", reader.feed, nice=nice)
    listing = TocListing(toc_process) if toc_process is not None else None
    size = 0
    raw = 0
    head = b""
    stream_error: Optional[str] = None
    decomp = StreamDecompressor(compression or compression_of(path))
    try:
        with (open(path, "rb") if source is None else nullcontext(source)) as handle:
            for block in iter(lambda: handle.read(read_bytes), b""):
                size += len(block)
                hasher.put(block)
                if stream_error:
                    continue  # keep hashing to the end: the checksum verdict is separate
                try:
                    out = decomp.decompress(unseal.compress(block) if unseal is not None else block)
                except ValueError as exc:
                    stream_error = str(exc)
                    continue
                raw += len(out)
                if len(head) < len(CUSTOM_FORMAT_MAGIC):
                    head += out[: len(CUSTOM_FORMAT_MAGIC)]
                if out and read_archive:
                    walker.put(out)
                if listing is not None:
                    listing.feed(out)
        if unseal is not None and not stream_error:
            try:
                out = decomp.decompress(unseal.flush())
                raw += len(out)
                if len(head) < len(CUSTOM_FORMAT_MAGIC):
                    head += out[: len(CUSTOM_FORMAT_MAGIC)]
                if out and read_archive:
                    walker.put(out)
                if listing is not None:
                    listing.feed(out)
            except ValueError as exc:
                stream_error = str(exc)
        stream_error = stream_error or decomp.truncation_error()
    finally:
        if unseal is not None:
            unseal.abort()
        hasher.close()
        walker.close()
        if listing is not None:
            listing.close_input()
    if hasher.error is not None:
        raise hasher.error
    if size == 0:
        verdict = StreamVerdict(False, 0, f"{path.name} is empty (0 bytes)")
    elif stream_error:
        verdict = StreamVerdict(False, raw, f"{path.name}: {stream_error} after {raw} decompressed bytes")
    elif not head.startswith(CUSTOM_FORMAT_MAGIC):
        verdict = StreamVerdict(False, raw, f"{path.name} decompresses but is not a pg_dump custom-format archive")
    else:
        verdict = StreamVerdict(True, raw, f"{path.name}: compressed stream valid to the end, {raw} bytes of archive")
    if read_archive:
        summary, archive_error = _archive_verdict(reader, walker.error, verdict)
    else:
        summary, archive_error = None, "the archive walk was skipped"
    toc_text, toc_error = listing.finish() if listing is not None else (None, None)
    return ArchiveInspection(
        digest.hexdigest(), size, verdict, toc_text, toc_error, summary, archive_error, time.monotonic() - started
    )


def list_toc(path: Path, toc_process) -> tuple[Optional[str], Optional[str]]:
    """``pg_restore --list`` of the file: (its output, None) or (None, why it failed). It is fed the decompressed
    file's header and table of contents, which is all pg_restore reads for a listing (:class:`TocListing`)."""
    listing = TocListing(toc_process)
    try:
        with closing(iter_decompressed(path)) as pieces:
            for piece in pieces:
                listing.feed(piece)
                if listing.fed_all:
                    break
    except ValueError:
        pass  # a damaged stream is the stream check's verdict; pg_restore says what it could list
    text, error = listing.finish()
    return (None, error) if error else (text, None)


TOC_HEADER_END = "; Selected TOC Entries:"


class TocListing:
    """``pg_restore --list`` of an archive fed piece by piece (:meth:`feed`), its output collected by a thread;
    :meth:`finish` returns (the listing, None) or (what was received, why it cannot be trusted).

    pg_restore is given the archive's header and table of contents and nothing more, then end of file. A
    listing reads no further, and a tool that exits with input still unread can lose its output on the way
    back: a container engine's exec (podman's Docker API) ends the attach on the failed write to the tool's
    stdin without copying the rest of its output, and an empty listing arrived with exit code 0. Where the
    TOC cannot be parsed here, pg_restore is fed until it stops reading and gives its own verdict.

    A listing is only taken whole: exit code 0, the header pg_restore prints (with the archive's TOC entry
    count, which must be the one parsed here) and a last line that ends.
    """

    def __init__(self, process) -> None:
        self._process = process
        self._sink: Optional[IO[bytes]] = process.stdin
        self._toc = ArchiveReader(toc_only=True)
        self._parse_failed = False
        self._offset = 0  # archive bytes seen so far
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(
            target=lambda: self._chunks.extend(iter(lambda: process.stdout.read(65536), b"")),
            name="toc-reader", daemon=True,
        )
        self._reader.start()

    @property
    def fed_all(self) -> bool:
        """pg_restore has all it will read (or stopped reading): later pieces are not needed."""
        return self._sink is None

    def feed(self, data: bytes) -> None:
        if self._sink is None or not data:
            return
        start, self._offset = self._offset, self._offset + len(data)
        if self._toc.toc_end is None and not self._parse_failed:
            try:
                self._toc.feed(data)
            except ArchiveFormatError:
                self._parse_failed = True
        end = self._toc.toc_end
        if end is None:
            self._sink = _feed(self._sink, data)
            return
        if end > start:
            self._sink = _feed(self._sink, data[: end - start])
        self.close_input()

    def close_input(self) -> None:
        """End of file for pg_restore (nothing more will be fed)."""
        self._sink = _feed(self._sink, None)

    def finish(self) -> tuple[str, Optional[str]]:
        self.close_input()
        self._reader.join()
        code = self._process.wait()
        text = b"".join(self._chunks).decode("utf-8", errors="replace")
        if code != 0:
            return text, f"pg_restore --list failed with exit code {code}: {self._process.stderr_text().strip()[-1500:]}"
        return text, self._incomplete(text)

    def abort(self) -> None:
        self.close_input()
        self._process.kill()

    def _incomplete(self, text: str) -> Optional[str]:
        """Why a listing that pg_restore ended with exit code 0 is not whole, or None."""
        got = f"({len(text.encode())} bytes received)"
        if TOC_HEADER_END not in text:
            return (f"pg_restore --list exited 0 but its listing is missing or cut short {got}: the output was lost "
                    "on its way back (through the container engine?); the archive's table of contents was not checked")
        if not text.endswith("\n"):
            return f"pg_restore --list exited 0 but its listing ends inside a line {got}: the output was cut short"
        if self._toc.toc_end is not None:
            expected = self._toc.entries_read
            for line in text.splitlines():
                if line.startswith(";") and "TOC Entries:" in line and "Selected" not in line:
                    listed = line.split(":", 1)[1].strip()
                    if listed != str(expected):
                        return (f"pg_restore --list reports {listed} TOC entries where the archive's table of contents "
                                f"holds {expected}: the listing is not of these bytes")
                    break
        return None


def toc_entry_count(toc_text: Optional[str]) -> int:
    """The entries in a ``pg_restore --list`` listing (lines that are not comments)."""
    return sum(1 for line in (toc_text or "").splitlines() if line and not line.startswith(";"))


def _archive_verdict(
    reader: ArchiveReader, walk_error: Optional[BaseException], stream: StreamVerdict
) -> tuple[Optional[ArchiveSummary], Optional[str]]:
    if walk_error is not None:
        if not isinstance(walk_error, ArchiveFormatError):
            raise walk_error
        return None, str(walk_error)
    if not stream.ok:
        return None, f"the archive could not be read to its end: {stream.message}"
    try:
        return reader.finish(), None
    except ArchiveFormatError as exc:
        return None, str(exc)


def _feed(sink: Optional[IO[bytes]], data: Optional[bytes]) -> Optional[IO[bytes]]:
    """Write to a tool's stdin; returns None once the tool stopped reading (pg_restore --list stops early)."""
    if sink is None:
        return None
    try:
        if data is None:
            sink.close()
            return None
        sink.write(data)
        return sink
    except (BrokenPipeError, ConnectionResetError):
        try:
            sink.close()
        except OSError:
            pass
        return None
    except OSError as exc:
        if exc.errno == 32:
            return None
        raise

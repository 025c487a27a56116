"""Reads a pg_dump custom-format archive from its first byte to its last, as a stream.

``pg_restore --list`` reads only the header and the table of contents: an archive cut at 70 % (pg_dump
exited 0, a pipe broke, a disk filled) lists every table and passes. :class:`ArchiveReader` checks the
archive itself: the header, every TOC entry, then every data block the TOC promises, each walked chunk by
chunk to its end marker, and nothing after the last one. It is fed the decompressed archive in pieces
(the same pass that decompresses and hashes the file) and holds at most one piece plus a few bytes.

The layout (PostgreSQL's ``pg_backup_archiver.c`` and ``pg_backup_custom.c``; versions 1.12 to 1.16,
pg_dump 11 to 17):

- header: ``PGDMP``, version (3 bytes), int size, offset size, format (1 = custom), compression
  (an int before 1.15, one byte from 1.15), creation time (7 ints), database name, server and pg_dump
  versions (strings);
- TOC: an int count, then per entry: dump id, has-data flag, table oid, oid, tag, desc, section, defn,
  drop statement, copy statement, namespace, tablespace, table access method (1.14+), relkind (1.16+),
  owner, "with oids", dependency ids until a NULL string, and the data offset (flag byte + offset);
- data: per entry with data, ``BLK_DATA`` (1) + dump id, then chunks ``int length + bytes`` ended by a
  zero length; large objects come as ``BLK_BLOBS`` (3) + dump id, then per object its oid and chunks,
  ended by oid 0. The archive ends right after the last block: there is no trailer.

An int is a sign byte then ``int size`` bytes, least significant first; a string is an int length
(-1 for NULL) then the bytes.

Walking the data chunk by chunk in Python would cost about 0.6 µs per row (pg_dump writes one chunk per
COPY row when it does not compress), several times the decompression itself. So the walk is vectorised
with numpy where the data allows it, and exact either way: in COPY text every row ends with a newline
and holds no NUL byte, so chunk headers are found among the positions that follow a newline and hold a
zero, and the chain "each header's length leads exactly to the next header" is checked for all chunks
of a piece at once. Wherever that shortcut does not hold (binary large objects, zlib-compressed
chunks, a broken chain), the reader walks the chunks one by one and reports exactly where it failed.

Rows are counted in the same walk. In COPY text every row ends with exactly one newline byte (a newline
inside a value is written as the two characters ``\\n``, in text and in bytea alike), so the rows of a
table are the newline bytes of its data block's chunk bodies, however pg_dump cut the rows into chunks,
up to the end-of-data line ``\\.`` that pg_dump writes as the block's last chunk (``\\.`` plus newlines;
no row can start with ``\\.``, a backslash in a value is written ``\\\\``). The fast path already holds
every newline position of a piece; it subtracts the few that fall inside chunk headers (a length byte of
0x0A). Only ``TABLE DATA`` entries whose TOC copy statement is a ``COPY``
are counted, and only in an archive without pg_dump compression; for anything else
:attr:`ArchiveSummary.row_counts` has no entry, and the caller counts another way.

Why one module over 400 lines: it is one concern, a resumable state machine over one format (header,
TOC, data blocks share the cursor and the resume points); split, each part would only call back into
the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
BLK_DATA = 1
BLK_BLOBS = 3
OFFSET_NO_DATA = 3
MIN_VERSION = (1, 12)
MAX_VERSION = (1, 16)
FAST_PATH_MIN_BYTES = 4096  # below this the per-chunk walk is as quick as setting up the vectorised one


class ArchiveFormatError(ValueError):
    """The bytes are not a complete, well-formed custom-format archive; the message says where and why."""


class _NeedMore(Exception):
    """Internal: the buffer ends inside the item being parsed."""


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    namespace: str
    tag: str
    owner: str
    has_data: bool
    copy_data: bool = False  # its data block is COPY text (a TABLE DATA entry with a COPY statement)

    @property
    def label(self) -> str:
        where = f"{self.namespace}.{self.tag}" if self.namespace else self.tag
        return f"{self.desc} {where} (dump id {self.dump_id})"


@dataclass
class ArchiveSummary:
    """What a complete read found: the header's facts, the TOC, and the data blocks with their sizes."""

    version: str
    database: str
    server_version: str
    pg_dump_version: str
    compression: int
    entries: list[TocEntry]
    block_bytes: dict[int, int] = field(default_factory=dict)  # dump id -> bytes of data in its block
    block_offsets: dict[int, int] = field(default_factory=dict)  # dump id -> archive offset where its block starts
    archive_bytes: int = 0
    # "schema.table" -> rows in its COPY data block; empty when the archive's data is compressed by pg_dump
    row_counts: dict[str, int] = field(default_factory=dict)

    @property
    def data_blocks(self) -> int:
        return len(self.block_bytes)


class _Cursor:
    """Reads ints and strings from a bytes buffer; raises _NeedMore at its end."""

    __slots__ = ("buf", "pos", "int_size")

    def __init__(self, buf: bytes, pos: int, int_size: int):
        self.buf, self.pos, self.int_size = buf, pos, int_size

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise _NeedMore
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _NeedMore
        value = self.buf[self.pos : end]
        self.pos = end
        return value

    def int(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        if sign not in (0, 1):
            raise ArchiveFormatError(f"bad integer sign byte {sign} at archive offset {{offset}}")
        return -value if sign else value

    def str(self) -> Optional[str]:
        length = self.int()
        if length < 0:
            return None
        return self.take(length).decode("utf-8", errors="replace")


class ArchiveReader:
    """Feed the decompressed archive with :meth:`feed`, then call :meth:`finish` for the summary.

    Both raise :class:`ArchiveFormatError` at the first defect, naming the archive offset and, inside
    the data, the TOC entry whose block is broken or missing.

    :attr:`toc_end` is the archive offset where the table of contents ends, once it has been read.
    ``toc_only=True`` reads no further: the header and TOC are parsed, later bytes are ignored (what
    ``pg_restore --list`` reads, :class:`loyalty_ops.lib.backup.integrity.TocListing`).
    """

    def __init__(self, *, toc_only: bool = False) -> None:
        self._toc_only = toc_only
        self.toc_end: Optional[int] = None
        self._buf = b""
        self._pos = 0
        self._base = 0  # archive offset of self._buf[0]
        self._skip = 0  # bytes of a chunk body still to come in later pieces
        self._received = 0  # archive bytes fed so far
        self._phase = "header"
        self._int_size = 4
        self._off_size = 8
        self._version: tuple[int, int, int] = (0, 0, 0)
        self._header: dict = {}
        self._toc_left = 0
        self._entries: list[TocEntry] = []
        self._promised: dict[int, TocEntry] = {}
        self._blocks: dict[int, int] = {}
        self._offsets: dict[int, int] = {}
        self._block: Optional[TocEntry] = None
        self._block_start = 0
        self._blob_block = False  # the current block holds large objects (oid, chunks, ..., oid 0)
        self._in_blob = False  # in a run of chunks (always, for BLK_DATA) rather than between large objects
        self._count_block = False  # the current block's rows are counted (COPY text, uncompressed archive)
        self._counting = False  # ... and its end-of-data line has not come yet
        self._pending_head: Optional[bytes] = None  # a chunk body's first byte(s) when a piece ended before two
        self._block_rows = 0
        self._rows: dict[int, int] = {}  # dump id -> rows of its COPY data
        self._error: Optional[ArchiveFormatError] = None

    @property
    def entries_read(self) -> int:
        """TOC entries parsed so far."""
        return len(self._entries)

    # -- feeding -------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if not data or (self._toc_only and self.toc_end is not None):
            return
        self._received += len(data)
        if self._skip:
            if self._counting:  # the rest of a chunk body that began in an earlier piece
                self._count_continued_body(data)
            if len(data) <= self._skip:
                self._skip -= len(data)
                self._base += len(data)
                return
            data = data[self._skip :]
            self._base += self._skip
            self._skip = 0
        if self._pos >= len(self._buf):
            self._base += len(self._buf)
            self._buf, self._pos = data, 0
        else:
            self._base += self._pos
            self._buf, self._pos = self._buf[self._pos :] + data, 0
        try:
            self._parse()
        except ArchiveFormatError as exc:
            self._error = ArchiveFormatError(str(exc).replace("{offset}", str(self._base + self._pos)))
            raise self._error from None

    def finish(self) -> ArchiveSummary:
        """The summary of a complete archive; raises when the archive ended early."""
        if self._error is not None:
            raise self._error
        end = self._received
        if self._phase == "header":
            raise ArchiveFormatError(f"the archive ends inside its header after {end} bytes")
        if self._phase == "toc":
            raise ArchiveFormatError(
                f"the archive ends inside its table of contents after {end} bytes "
                f"({len(self._entries)} of {len(self._entries) + self._toc_left} entries read)"
            )
        if self._phase == "chunks":
            assert self._block is not None
            raise ArchiveFormatError(
                f"the archive ends inside the data of {self._block.label} after {end} bytes: "
                "its end marker is missing (the dump was cut short)"
            )
        missing = [entry for dump_id, entry in self._promised.items() if dump_id not in self._blocks]
        if missing:
            names = ", ".join(entry.label for entry in missing[:10])
            raise ArchiveFormatError(
                f"the archive ends after {len(self._blocks)} of {len(self._promised)} data blocks "
                f"({end} bytes): missing {names}{' ...' if len(missing) > 10 else ''}"
            )
        h = self._header
        return ArchiveSummary(
            version=".".join(str(part) for part in self._version),
            database=h.get("database") or "",
            server_version=h.get("server_version") or "",
            pg_dump_version=h.get("pg_dump_version") or "",
            compression=h.get("compression", 0),
            entries=self._entries,
            block_bytes=dict(self._blocks),
            block_offsets=dict(self._offsets),
            archive_bytes=end,
            row_counts={
                f"{entry.namespace}.{entry.tag}": self._rows[dump_id]
                for dump_id, entry in self._promised.items()
                if dump_id in self._rows
            },
        )

    # -- parsing -------------------------------------------------------------------------------------

    def _parse(self) -> None:
        while self._pos < len(self._buf):
            if self._toc_only and self.toc_end is not None:
                return
            if self._phase == "header":
                if not self._parse_header():
                    return
            elif self._phase == "toc":
                if not self._parse_toc_entry():
                    return
            elif self._phase == "blocks":
                if not self._parse_block_start():
                    return
            elif self._phase == "chunks":
                if not self._walk_chunks():
                    return
            else:  # pragma: no cover - phases are closed
                raise AssertionError(self._phase)

    def _parse_header(self) -> bool:
        cur = _Cursor(self._buf, self._pos, 4)
        try:
            if cur.take(5) != MAGIC:
                raise ArchiveFormatError("not a pg_dump custom-format archive (no PGDMP magic)")
            self._version = (cur.byte(), cur.byte(), cur.byte())
            if not MIN_VERSION <= self._version[:2] <= MAX_VERSION:
                raise ArchiveFormatError(
                    f"archive version {'.'.join(map(str, self._version))} is outside what this check reads "
                    f"({MIN_VERSION[0]}.{MIN_VERSION[1]}-{MAX_VERSION[0]}.{MAX_VERSION[1]}, pg_dump 11-17); "
                    "it cannot be verified"
                )
            cur.int_size = self._int_size = cur.byte()
            self._off_size = cur.byte()
            if not 1 <= self._int_size <= 8 or not 1 <= self._off_size <= 8:
                raise ArchiveFormatError(f"implausible int size {self._int_size} / offset size {self._off_size}")
            fmt = cur.byte()
            if fmt != FORMAT_CUSTOM:
                raise ArchiveFormatError(f"archive format {fmt} is not the custom format (1)")
            compression = cur.byte() if self._version[:2] >= (1, 15) else cur.int()
            for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
                cur.int()
            database, server_version, pg_dump_version = cur.str(), cur.str(), cur.str()
            self._toc_left = cur.int()
        except _NeedMore:
            return False
        if self._toc_left < 0:
            raise ArchiveFormatError(f"negative TOC entry count {self._toc_left}")
        self._header = {
            "database": database,
            "server_version": server_version,
            "pg_dump_version": pg_dump_version,
            "compression": compression,
        }
        self._pos = cur.pos
        self._phase = "toc" if self._toc_left else "blocks"
        if not self._toc_left:
            self.toc_end = self._base + self._pos
        return True

    def _parse_toc_entry(self) -> bool:
        cur = _Cursor(self._buf, self._pos, self._int_size)
        try:
            dump_id = cur.int()
            had_dumper = cur.int()
            cur.str()  # table oid
            cur.str()  # oid
            tag = cur.str() or ""
            desc = cur.str() or ""
            cur.int()  # section
            cur.str()  # defn
            cur.str()  # drop statement
            copy_stmt = cur.str() or ""
            namespace = cur.str() or ""
            cur.str()  # tablespace
            if self._version[:2] >= (1, 14):
                cur.str()  # table access method
            if self._version[:2] >= (1, 16):
                cur.int()  # relkind
            owner = cur.str() or ""
            cur.str()  # "with oids"
            while cur.str() is not None:  # dependencies, ended by a NULL string
                pass
            data_state = cur.byte()
            cur.take(self._off_size)
        except _NeedMore:
            return False
        if data_state not in (1, 2, 3):
            raise ArchiveFormatError(f"TOC entry {dump_id} ({desc} {tag}) has an unknown data-offset flag {data_state}")
        has_data = bool(had_dumper) and data_state != OFFSET_NO_DATA
        copy_data = has_data and desc == "TABLE DATA" and copy_stmt.lstrip().upper().startswith("COPY ")
        entry = TocEntry(dump_id, desc, namespace, tag, owner, has_data, copy_data)
        self._entries.append(entry)
        if entry.has_data:
            if dump_id in self._promised:
                raise ArchiveFormatError(f"two TOC entries share dump id {dump_id}")
            self._promised[dump_id] = entry
        self._pos = cur.pos
        self._toc_left -= 1
        if self._toc_left == 0:
            self._phase = "blocks"
            self.toc_end = self._base + self._pos
        return True

    def _parse_block_start(self) -> bool:
        if len(self._blocks) == len(self._promised):
            extra = len(self._buf) - self._pos
            raise ArchiveFormatError(
                f"{extra}+ bytes of garbage after the end of the archive (all {len(self._promised)} data "
                "blocks were complete): the file is not exactly what pg_dump wrote"
            )
        cur = _Cursor(self._buf, self._pos, self._int_size)
        try:
            kind = cur.byte()
            dump_id = cur.int()
        except _NeedMore:
            return False
        if kind not in (BLK_DATA, BLK_BLOBS):
            raise ArchiveFormatError(f"expected a data block at offset {{offset}}, found block type {kind}")
        entry = self._promised.get(dump_id)
        if entry is None:
            raise ArchiveFormatError(f"a data block for dump id {dump_id}, which the TOC does not promise")
        if dump_id in self._blocks:
            raise ArchiveFormatError(f"a second data block for {entry.label}")
        self._block = entry
        self._blocks[dump_id] = 0
        self._offsets[dump_id] = self._base + self._pos
        self._in_blob = kind == BLK_DATA  # a BLK_DATA block is one run of chunks; BLOBS start between objects
        self._blob_block = kind == BLK_BLOBS
        self._count_block = kind == BLK_DATA and entry.copy_data and self._header.get("compression") == 0
        self._counting = self._count_block
        self._pending_head = None
        self._block_rows = 0
        self._pos = cur.pos
        self._block_start = self._base + self._pos
        self._phase = "chunks"
        return True

    def _end_block(self, end_pos: int) -> None:
        assert self._block is not None
        self._blocks[self._block.dump_id] = self._base + end_pos - self._block_start
        if self._count_block:
            self._rows[self._block.dump_id] = self._block_rows
        self._count_block = self._counting = False
        self._block = None
        self._pos = end_pos
        self._phase = "blocks"

    def _walk_chunks(self) -> bool:
        """Walk the current block's chunks as far as the buffer goes; True when more parsing can follow."""
        if self._blob_block and not self._in_blob:
            cur = _Cursor(self._buf, self._pos, self._int_size)
            try:
                oid = cur.int()
            except _NeedMore:
                return False
            self._pos = cur.pos
            if oid == 0:
                self._end_block(self._pos)
                return True
            self._in_blob = True
        if not self._blob_block and len(self._buf) - self._pos >= FAST_PATH_MIN_BYTES:
            outcome = self._walk_fast()
            if outcome is not None:
                return outcome
        return self._walk_slow()

    def _chunk_run_ended(self, end_pos: int) -> None:
        if self._blob_block:
            self._in_blob = False
            self._pos = end_pos
        else:
            self._end_block(end_pos)

    def _walk_slow(self) -> bool:
        buf, pos, size = self._buf, self._pos, self._int_size
        n = len(buf)
        while True:
            if pos + 1 + size > n:
                self._pos = pos
                return False
            sign = buf[pos]
            if sign != 0:
                self._pos = pos
                raise ArchiveFormatError(
                    f"broken chunk header (sign byte {sign}) at offset {{offset}} in the data of {self._block.label}"
                )
            length = int.from_bytes(buf[pos + 1 : pos + 1 + size], "little")
            pos += 1 + size
            if length == 0:
                self._chunk_run_ended(pos)
                return True
            if pos + length > n:
                if self._counting:
                    self._count_body(buf, pos, n, complete=False)
                self._skip = pos + length - n
                self._pos = n
                return False
            if self._counting:
                self._count_body(buf, pos, pos + length, complete=True)
            pos += length

    def _walk_fast(self) -> Optional[bool]:
        """The vectorised walk (see the module docstring); None when it cannot decide (walk slowly then)."""
        buf, pos, size = self._buf, self._pos, self._int_size
        if size != 4:
            return None
        end = len(buf)
        arr = np.frombuffer(buf, dtype=np.uint8)
        newlines = np.flatnonzero(arr[pos : end - 1] == 10)
        newlines += pos
        zeros = newlines[arr[newlines + 1] == 0]  # a zero right after a newline: a chunk header, or inside one
        cand = np.empty(len(zeros) + 1, dtype=np.int64)
        cand[0] = pos
        cand[1:] = zeros
        cand[1:] += 1
        if len(cand) > 1:
            # a zero after a newline *inside* a header (a length byte 0x0A) sits 2-4 bytes after the header's
            # start; a real next header is at least 6 bytes after it, so dropping near neighbours is exact
            cand = cand[np.concatenate(([True], np.diff(cand) >= 5))]
        cand = cand[cand + 5 <= end]
        if len(cand) == 0:
            return None
        lengths = arr[cand + 1].astype(np.int64)
        lengths |= arr[cand + 2].astype(np.int64) << 8
        lengths |= arr[cand + 3].astype(np.int64) << 16
        lengths |= arr[cand + 4].astype(np.int64) << 24
        following = cand + 5 + lengths
        broken = np.flatnonzero(following[:-1] != cand[1:])
        last = int(broken[0]) if len(broken) else len(cand) - 1
        ended = np.flatnonzero(lengths[: last + 1] == 0)
        if len(ended):
            stop = int(cand[ended[0]]) + 5
            self._count_rows_fast(arr, newlines, cand[: int(ended[0]) + 1], stop)
            self._chunk_run_ended(stop)
            return True
        nxt = int(following[last])
        if nxt + 5 <= end:
            # the chain leads to a position that is not a header candidate: let the exact walk decide
            self._count_rows_fast(arr, newlines, cand[:last], int(cand[last]))
            self._pos = int(cand[last])
            return None
        if nxt > end:
            self._count_rows_fast(arr, newlines, cand[: last + 1], end)
            self._skip = nxt - end
            self._pos = end
        else:
            self._count_rows_fast(arr, newlines, cand[: last + 1], nxt)
            self._pos = nxt
        return False

    # -- row counting ----------------------------------------------------------------------------------

    def _count_body(self, buf: bytes, start: int, stop: int, *, complete: bool) -> None:
        """Count the rows of one chunk body, ``buf[start:stop]`` (all of it, or its first part)."""
        if stop - start < 2 and not complete:
            self._pending_head = buf[start:stop]  # too short to tell the end-of-data line from a row yet
        elif buf.startswith(b"\\.", start, stop):
            self._counting = False  # the end-of-data line: nothing after it is a row
        else:
            self._block_rows += buf.count(b"\n", start, stop)

    def _count_continued_body(self, data: bytes) -> None:
        """Count the rows in ``data[:self._skip]``, the rest of a chunk body begun in an earlier piece."""
        take = min(len(data), self._skip)
        if self._pending_head is None:
            self._block_rows += data.count(b"\n", 0, take)
            return
        head, self._pending_head = self._pending_head + data[:take], None
        self._count_body(head, 0, len(head), complete=take == self._skip)

    def _count_rows_fast(self, arr: np.ndarray, newlines: np.ndarray, headers: np.ndarray, stop: int) -> None:
        """Add the rows in ``[self._pos, stop)``: its newline bytes minus those inside the chunk ``headers``,
        up to an end-of-data line."""
        if not self._counting:
            return
        if len(headers):
            heads = headers[headers + 6 < stop]
            marker = np.flatnonzero((arr[heads + 5] == 0x5C) & (arr[heads + 6] == 0x2E))
            if len(marker):  # the end-of-data line: count up to its chunk, then no more
                at = int(heads[marker[0]])
                self._add_fast(arr, newlines, headers[headers < at], at)
                self._counting = False
                return
            last = int(headers[-1])
            if stop - last - 5 < 2 and stop == len(arr) and self._skip_after(last, arr):
                # the piece ends one byte into a body: decide on it with the next piece
                self._add_fast(arr, newlines, headers, last + 5)
                self._pending_head = arr[last + 5 : stop].tobytes()
                return
        self._add_fast(arr, newlines, headers, stop)

    def _skip_after(self, header: int, arr: np.ndarray) -> bool:
        """Whether the chunk at ``header`` runs past the end of the buffer (its body continues in later pieces)."""
        length = int.from_bytes(arr[header + 1 : header + 5].tobytes(), "little")
        return header + 5 + length > len(arr)

    def _add_fast(self, arr: np.ndarray, newlines: np.ndarray, headers: np.ndarray, stop: int) -> None:
        found = int(np.searchsorted(newlines, stop))  # newlines holds the positions before the last byte
        if stop == len(arr) and stop > self._pos and arr[stop - 1] == 10:
            found += 1
        if len(headers):
            found -= int(np.count_nonzero(arr[headers + 1] == 10) + np.count_nonzero(arr[headers + 2] == 10)
                         + np.count_nonzero(arr[headers + 3] == 10) + np.count_nonzero(arr[headers + 4] == 10))
        self._block_rows += found

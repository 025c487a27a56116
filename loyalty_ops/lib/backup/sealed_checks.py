"""The plaintext checks of an encrypted backup, done in the backup pass itself.

Once a backup is encrypted, its stream, archive and table of contents can only be read with the private key,
which the backup box may not hold (it needs only the recipients). So the compressed stream is inspected
*as it is written*, block by block before encryption: decompressed to its end, the whole archive walked
(every data block to its end marker, :mod:`loyalty_ops.lib.backup.archive`) and fed to ``pg_restore --list``,
and hashed. The verdict is recorded with the backup before it gets its name; the blocking checks report it
and check the file on disk (its SHA-256, its age header). With the key at hand the checks decrypt the file
on disk and read it whole instead (``integrity.inspect_archive(..., unseal=...)``).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Optional

from loyalty_ops.lib.backup.archive import ArchiveReader
from loyalty_ops.lib.backup.integrity import (
    CUSTOM_FORMAT_MAGIC,
    ArchiveInspection,
    StreamDecompressor,
    StreamVerdict,
    TocListing,
    _archive_verdict,
    _Worker,
    toc_entry_count,
)


class InPassInspection:
    """Push each compressed block with :meth:`feed`; :meth:`finish` returns the same
    :class:`ArchiveInspection` that reading the unencrypted file would have given."""

    def __init__(self, compression: str, toc_process: Any = None, *, label: str = "the compressed stream", nice: int = 0):
        self._started = time.monotonic()
        self._label = label
        self._digest = hashlib.sha256()
        self._reader = ArchiveReader()
        self._walker = _Worker("in-pass-archive-walk", self._reader.feed, nice=nice)
        self._decomp = StreamDecompressor(compression)
        self._listing = TocListing(toc_process) if toc_process is not None else None
        self._size = 0
        self._raw = 0
        self._head = b""
        self._error: Optional[str] = None

    def feed(self, block: bytes) -> None:
        self._size += len(block)
        self._digest.update(block)
        if self._error:
            return
        try:
            out = self._decomp.decompress(block)
        except ValueError as exc:
            self._error = str(exc)
            return
        self._raw += len(out)
        if len(self._head) < len(CUSTOM_FORMAT_MAGIC):
            self._head += out[: len(CUSTOM_FORMAT_MAGIC)]
        if out:
            self._walker.put(out)
            if self._listing is not None:
                self._listing.feed(out)

    def finish(self) -> ArchiveInspection:
        self._walker.close()
        if self._listing is not None:
            self._listing.close_input()
        error = self._error or self._decomp.truncation_error()
        if self._size == 0:
            verdict = StreamVerdict(False, 0, f"{self._label} is empty")
        elif error:
            verdict = StreamVerdict(False, self._raw, f"{self._label}: {error} after {self._raw} decompressed bytes")
        elif not self._head.startswith(CUSTOM_FORMAT_MAGIC):
            verdict = StreamVerdict(False, self._raw, f"{self._label} decompresses but is not a pg_dump custom-format archive")
        else:
            verdict = StreamVerdict(True, self._raw, f"{self._label} (checked before encryption): valid to the end, {self._raw} bytes of archive")
        summary, archive_error = _archive_verdict(self._reader, self._walker.error, verdict)
        toc_text, toc_error = self._listing.finish() if self._listing is not None else (None, None)
        return ArchiveInspection(
            self._digest.hexdigest(), self._size, verdict, toc_text, toc_error, summary, archive_error,
            time.monotonic() - self._started,
        )

    def abort(self) -> None:
        self._walker.close()
        if self._listing is not None:
            self._listing.abort()


def in_pass_record(inspection: ArchiveInspection, missing_tables: list[str], *, when: str = "before encryption") -> dict[str, Any]:
    """What the blocking checks need from an in-pass inspection, as plain JSON for the backup's metadata.
    ``when`` says which bytes were read ("before encryption"; the read-back of the file as it was written)."""
    summary = inspection.archive
    return {
        "stream_ok": inspection.stream.ok,
        "stream_message": inspection.stream.message,
        "decompressed_bytes": inspection.stream.raw_bytes,
        "archive_complete": summary is not None,
        "archive_message": (
            f"read to the end {when}: {summary.data_blocks} of {summary.data_blocks} data blocks complete, "
            f"{len(summary.entries)} TOC entries, {summary.archive_bytes} bytes of archive (format {summary.version})"
            if summary is not None else str(inspection.archive_error)
        ),
        "archive_bytes": summary.archive_bytes if summary is not None else 0,
        "archive_toc_entries": len(summary.entries) if summary is not None else 0,
        "archive_version": summary.version if summary is not None else "",
        "data_blocks": summary.data_blocks if summary is not None else 0,
        "toc_error": inspection.toc_error or "",
        "toc_entries": toc_entry_count(inspection.toc_text),
        "missing_tables": missing_tables,
        "compressed_sha256": inspection.sha256,
        "seconds": round(inspection.seconds, 3),
    }

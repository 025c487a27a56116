"""Exact row counts of a backup, taken from the dump stream itself: each table is read once, by pg_dump.

The backup walks its archive once, with :class:`~loyalty_ops.lib.backup.archive.ArchiveReader`, to check it
(the file read back from disk as it is written, :mod:`loyalty_ops.lib.backup.readback`; an encrypted
backup's stream just before encryption) and counts each table's rows from its COPY data in the same walk
(see the archive module); :func:`counts_from_stream` turns that walk into the manifest's counts.
:class:`StreamRowCounter` does the same for a raw dump stream fed to it chunk by chunk. The numbers are
exactly what the archive holds, so exactly what a restore must give back.

``count(*)`` in the dump's exported snapshot remains as the fallback, inside the same snapshot and so as
exact: for the whole backup when ``LOYALTY_BACKUP_ROW_COUNTS=count``, when the stream could not be walked,
or for a table the stream has no COPY data for. Which source gave the numbers is recorded in the manifest
(``row_counts_source``: ``dump_stream``, ``dump_stream+count`` or ``count``, with ``row_counts_note``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import psycopg

from loyalty_ops.lib.backup.archive import ArchiveFormatError, ArchiveReader
from loyalty_ops.lib.backup.integrity import _Worker
from loyalty_ops.lib.pg import catalog
from loyalty_ops.lib.pg.catalog import TableRef

SOURCES = ("stream", "count")  # LOYALTY_BACKUP_ROW_COUNTS


@dataclass(frozen=True)
class RowCounts:
    counts: dict[str, int]
    source: str  # "dump_stream", "dump_stream+count" or "count"
    note: str


class StreamRowCounter:
    """Feed it the raw dump stream (:meth:`feed`), then ask :meth:`counts` once pg_dump has finished."""

    def __init__(self, nice: int = 0) -> None:
        self._reader = ArchiveReader()
        self._worker = _Worker("dump-row-count", self._reader.feed, nice=nice)
        self._closed = False

    def feed(self, chunk: bytes) -> None:
        self._worker.put(chunk)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._worker.close()

    def counts(self, conn: psycopg.Connection, tables: list[TableRef]) -> RowCounts:
        """Every table's rows: from the stream where it had the table's COPY data, else ``count(*)`` on
        ``conn`` (which must still be in the dump's snapshot). Partitioned parents have 0 of their own."""
        self.close()
        try:
            if self._worker.error is not None:
                raise self._worker.error
            streamed = self._reader.finish().row_counts
        except ArchiveFormatError as exc:
            return counts_from_stream(None, str(exc), conn, tables)
        return counts_from_stream(streamed, None, conn, tables)


def counts_from_stream(
    streamed: Optional[dict[str, int]], walk_error: Optional[str], conn: psycopg.Connection, tables: list[TableRef]
) -> RowCounts:
    """Every table's rows from a walk of the dump's archive (``ArchiveSummary.row_counts``), ``count(*)`` on
    ``conn`` (still in the dump's snapshot) for the tables it had no COPY data for, or for all of them when
    the walk failed (``walk_error``). Partitioned parents have 0 of their own."""
    if streamed is None:
        return RowCounts(
            catalog.count_rows(conn, tables),
            "count",
            f"the dump stream could not be walked ({walk_error}); counted with count(*) in the dump's snapshot",
        )
    counts: dict[str, int] = {}
    by_query: list[TableRef] = []
    for table in tables:
        if table.kind == "p":
            counts[table.qualified] = 0
        elif table.qualified in streamed:
            counts[table.qualified] = streamed[table.qualified]
        else:
            by_query.append(table)
    if not by_query:
        return RowCounts(counts, "dump_stream", f"{len(counts)} tables counted from the dump stream")
    counts.update(catalog.count_rows(conn, by_query))
    names = ", ".join(t.qualified for t in by_query[:10]) + (" ..." if len(by_query) > 10 else "")
    return RowCounts(
        counts,
        "dump_stream+count",
        f"{len(tables) - len(by_query)} tables counted from the dump stream; {len(by_query)} had no COPY data "
        f"in it and were counted with count(*) in the dump's snapshot: {names}",
    )

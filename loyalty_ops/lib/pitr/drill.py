"""The PITR drill's marks in the live database and their proof in the recovered one.

A marker row is committed, a restore point is created right after it, a second row is committed after the
restore point, and the WAL is switched out. Recovery to the restore point must show the marker and must not
show the second row: that proves recovery stops exactly at the point asked for, not merely "somewhere"."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Optional

from loyalty_ops.lib.pitr.archive import WalObject, segment_in_bucket
from loyalty_ops.lib.pitr.location import PitrLocation

MARKER_SCHEMA = "loyalty_ops"
MARKER_TABLE = "pitr_drill_markers"
MARKER_KEEP_DAYS = 30

SETUP_SQL = f"""
CREATE SCHEMA IF NOT EXISTS {MARKER_SCHEMA};
CREATE TABLE IF NOT EXISTS {MARKER_SCHEMA}.{MARKER_TABLE} (
    drill_id text NOT NULL, kind text NOT NULL CHECK (kind IN ('marker', 'after_target')),
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (drill_id, kind))
"""


class DrillArchiveTimeout(RuntimeError):
    """The drill's WAL did not reach the bucket in time: archiving is stuck or slow."""


@dataclass(frozen=True)
class DrillMarks:
    drill_id: str
    restore_point: str
    restore_point_lsn: str
    marker_written_at: datetime  # the database's clock
    committed_at: float  # this machine's clock (time.time()) right after the marker's commit
    segment: str  # the WAL segment holding the marker, the restore point and the second row


def new_drill_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "_" + uuid.uuid4().hex[:8]


def write_marks(conn, drill_id: str) -> DrillMarks:
    """Commits the marker, creates the restore point, commits the row after it, switches the WAL out.
    ``conn`` is an autocommit connection to the live database as a superuser (restore points need one)."""
    for statement in SETUP_SQL.strip().split(";\n"):
        conn.execute(statement)
    conn.execute(f"DELETE FROM {MARKER_SCHEMA}.{MARKER_TABLE} WHERE written_at < now() - make_interval(days => %s)",
                 (MARKER_KEEP_DAYS,))
    (written_at,) = conn.execute(
        f"INSERT INTO {MARKER_SCHEMA}.{MARKER_TABLE} (drill_id, kind) VALUES (%s, 'marker') RETURNING written_at", (drill_id,)
    ).fetchone()
    committed_at = time.time()
    name = f"pitr_drill_{drill_id}"
    (lsn,) = conn.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()
    conn.execute(f"INSERT INTO {MARKER_SCHEMA}.{MARKER_TABLE} (drill_id, kind) VALUES (%s, 'after_target')", (drill_id,))
    (segment,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    conn.execute("SELECT pg_switch_wal()")
    return DrillMarks(drill_id, name, lsn, written_at, committed_at, segment)


def wait_in_bucket(s3_client, location: PitrLocation, segment: str, *, timeout_s: float, tick: Optional[Callable[[str], None]] = None,
                   interval_s: float = 10.0, poll_s: float = 0.25) -> tuple[WalObject, float]:
    """Waits until ``segment`` is an object in the bucket; returns it and when it was first seen (time.time())."""
    started = last_tick = time.monotonic()
    while True:
        found = segment_in_bucket(s3_client, location, segment)
        if found is not None:
            return found, time.time()
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise DrillArchiveTimeout(f"WAL segment {segment} (the drill's marker) was not in {location.describe()} "
                                      f"after {timeout_s:.0f} s: archiving is failing or far behind")
        if tick is not None and time.monotonic() - last_tick >= interval_s:
            last_tick = time.monotonic()
            tick(f"waiting for WAL segment {segment} to reach the bucket: {waited:.0f} s")
        time.sleep(poll_s)


def read_marks(conn, drill_id: str) -> set[str]:
    """The drill's rows present in the recovered database (``marker`` and/or ``after_target``)."""
    try:
        rows = conn.execute(f"SELECT kind FROM {MARKER_SCHEMA}.{MARKER_TABLE} WHERE drill_id = %s", (drill_id,)).fetchall()
    except Exception:  # the table itself is missing: recovery stopped before the drill's first write
        return set()
    return {row[0] for row in rows}

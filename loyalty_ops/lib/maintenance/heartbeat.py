"""Progress of one long maintenance statement, logged from a second connection."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

import psycopg

from loyalty_ops.lib.pg.connection import ConnectionSpec


class Heartbeat:
    """While one long statement runs, log every ``interval`` seconds that it is alive and how far it got
    (``pg_stat_progress_vacuum`` / ``pg_stat_progress_create_index``), from a second connection opened
    only if the statement outlives the first interval."""

    def __init__(
        self, label: str, backend_pid: int, spec: Optional[ConnectionSpec], log: Any, interval: float,
        connect: Callable[[ConnectionSpec], psycopg.Connection],
    ):
        self.label, self.pid, self.spec, self.log, self.interval = label, backend_pid, spec, log, interval
        self._connect = connect
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> "Heartbeat":
        if self.spec is not None and self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _progress(self, conn: psycopg.Connection) -> str:
        parts = []
        row = conn.execute(
            "SELECT phase, heap_blks_scanned, heap_blks_total FROM pg_stat_progress_vacuum WHERE pid = %s",
            (self.pid,),
        ).fetchone()
        if row:
            phase, done, total = row
            parts.append(f"phase {phase}" + (f", {100 * done / total:.0f}% of heap scanned" if total else ""))
        row = conn.execute(
            "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
            "FROM pg_stat_progress_create_index WHERE pid = %s",
            (self.pid,),
        ).fetchone()
        if row:
            phase, bdone, btotal, tdone, ttotal = row
            pct = f", {100 * bdone / btotal:.0f}% of blocks" if btotal else (f", {100 * tdone / ttotal:.0f}% of tuples" if ttotal else "")
            parts.append(f"phase {phase}{pct}")
        row = conn.execute(
            "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (self.pid,)
        ).fetchone()
        if row and row[0] in ("Lock", "IO"):
            parts.append(f"waiting on {row[0]}/{row[1]}")
        return "".join(f"; {p}" for p in parts)

    def _run(self) -> None:
        conn = None
        try:
            while not self._stop.wait(self.interval):
                detail = ""
                try:
                    if conn is None:
                        conn = self._connect(self.spec)  # type: ignore[arg-type]
                    detail = self._progress(conn)
                except Exception:  # progress is best effort; never disturb the statement itself
                    detail = ""
                self.log.info(f"{self.label}: still running after {time.monotonic() - self._start:.1f} s{detail}")
        finally:
            if conn is not None:
                conn.close()

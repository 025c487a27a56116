"""Running ``pg_restore -j N --exit-on-error`` through a :class:`PgToolRunner`, with progress.

pg_restore prints nothing about progress, so a monitor thread watches the server instead: it polls
``pg_stat_progress_copy`` for the bytes each COPY has loaded (a COPY that ends counts with the last bytes
seen) and ``pg_stat_progress_create_index`` for index builds, and reports loaded bytes against the
archive's size, percent and ETA at most every ``interval_s`` seconds. Connection settings reach
pg_restore through the runner's environment; only the database name and the archive path are in argv.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psycopg

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.session import connect
from loyalty_ops.lib.pg.tools import PgToolRunner, ToolError
from loyalty_ops.lib.formatting import first_line, human_bytes
from loyalty_ops.lib.progress import ProgressSnapshot

POLL_S = 0.25  # a COPY's last bytes are known only up to its final poll


def pg_restore_args(
    archive: Optional[Path], database: str, jobs: int, *, no_owner: bool = False, no_privileges: bool = False
) -> list[str]:
    """``archive`` None: pg_restore reads the archive from its standard input (only with ``jobs`` 1)."""
    args = ["--exit-on-error", f"--jobs={jobs}", "--no-password", f"--dbname={database}"]
    if no_owner:
        args.append("--no-owner")
    if no_privileges:
        args.append("--no-privileges")
    return [*args, str(archive)] if archive is not None else args


Feed = Callable[[Callable[[bytes], None]], object]  # writes the archive through the function it is given


@dataclass
class RestoreProgress:
    loaded_bytes: int = 0
    copies: int = 0
    index_builds: int = 0
    monitor_error: Optional[str] = None


class RestoreMonitor:
    """Polls the target database's progress views; emits a message at most every ``interval_s``."""

    def __init__(
        self,
        spec: ConnectionSpec,
        database: str,
        expected_bytes: Optional[int],
        emit: Optional[Callable[[str], None]],
        interval_s: float = 10.0,
    ):
        self._spec = spec.with_database(database)
        self._database = database
        self._expected = expected_bytes
        self._emit = emit
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg_restore-monitor", daemon=True)
        self._done_copies: int = 0
        self._live: dict[tuple[int, int], int] = {}
        self._seen_copy = False
        self.progress = RestoreProgress()
        self._started = time.monotonic()

    def start(self) -> "RestoreMonitor":
        self._thread.start()
        return self

    def stop(self) -> RestoreProgress:
        self._stop.set()
        self._thread.join(5)
        return self.progress

    def _poll(self, conn: psycopg.Connection) -> None:
        rows = conn.execute(
            "SELECT pid, relid::bigint, bytes_processed FROM pg_stat_progress_copy WHERE datname = current_database()"
        ).fetchall()
        builds = conn.execute(
            "SELECT count(*) FROM pg_stat_progress_create_index WHERE datname = current_database()"
        ).fetchone()[0]
        live = {(int(pid), int(relid or 0)): int(done or 0) for pid, relid, done in rows}
        for key, last in self._live.items():
            if key not in live:
                self._done_copies += last
        self._live = live
        self._seen_copy = self._seen_copy or bool(live)
        loaded = self._done_copies + sum(live.values())
        if self._seen_copy and not live and builds and self._expected:
            # No COPY left and indexes are being built: pg_restore is past the data (the bytes of COPYs that
            # ended between two polls were never seen, so count the data as done).
            loaded = max(loaded, self._expected)
        self.progress.loaded_bytes = loaded
        self.progress.copies = len(live)
        self.progress.index_builds = int(builds)

    def message(self) -> str:
        snap = ProgressSnapshot("pg_restore", self.progress.loaded_bytes, self._expected, time.monotonic() - self._started)
        text = snap.message().replace("pg_restore: ", "pg_restore: table data loaded ", 1)
        phase = []
        if self.progress.copies:
            phase.append(f"{self.progress.copies} table(s) loading")
        if self.progress.index_builds:
            phase.append(f"{self.progress.index_builds} index build(s) running")
        if phase:
            text += f" [{'; '.join(phase)}]"
        if self.progress.monitor_error:
            text += f" (progress views unavailable: {self.progress.monitor_error})"
        return text

    def _run(self) -> None:
        conn: Optional[psycopg.Connection] = None
        last_emit = time.monotonic()
        while not self._stop.wait(min(POLL_S, self._interval)):
            try:
                if conn is None:
                    conn = connect(self._spec, autocommit=True)
                self._poll(conn)
            except Exception as exc:  # the restore goes on; the log still says it is alive
                self.progress.monitor_error = first_line(exc)[:200]
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                    conn = None
            now = time.monotonic()
            if self._emit and now - last_emit >= self._interval:
                last_emit = now
                self._emit(self.message())
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


@dataclass(frozen=True)
class PgRestoreResult:
    duration_s: float
    loaded_bytes: int
    stderr: str


def run_pg_restore(
    runner: PgToolRunner,
    spec: ConnectionSpec,
    archive: Optional[Path],
    database: str,
    *,
    jobs: int,
    no_owner: bool = False,
    no_privileges: bool = False,
    expected_bytes: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
    progress_interval_s: float = 10.0,
    feed: Optional[Feed] = None,
) -> PgRestoreResult:
    """Restore ``archive`` into the existing, empty ``database``; raise :class:`ToolError` on any error.

    With ``feed`` (and ``archive`` None) pg_restore reads its standard input, and ``feed`` is called on a
    thread with the function that writes to it; an error ``feed`` raises is raised here after pg_restore ended.
    """
    if feed is not None and jobs != 1:
        raise ValueError("pg_restore reads standard input only with jobs 1")
    started = time.monotonic()
    monitor = RestoreMonitor(spec, database, expected_bytes, log, progress_interval_s).start()
    proc = runner.start(
        "pg_restore", pg_restore_args(archive, database, jobs, no_owner=no_owner, no_privileges=no_privileges), database=database,
        stdout=False, stdin=feed is not None,
    )
    feeder = _Feeder(proc, feed).start() if feed is not None else None
    try:
        code = proc.wait()
    except BaseException:
        proc.kill()
        raise
    finally:
        if feeder is not None:
            feeder.join()
        progress = monitor.stop()
    stderr = proc.stderr_text()
    if feeder is not None and feeder.error is not None and not isinstance(feeder.error, BrokenPipeError):
        raise feeder.error  # the archive could not be streamed (or changed): this says why, not pg_restore
    if code == 0 and feeder is not None and feeder.error is not None:
        raise ToolError("pg_restore stopped reading its input before the end of the archive", tool="pg_restore", stderr=stderr)
    if code != 0:
        raise ToolError(
            f"pg_restore exited with code {code}: {stderr.strip()[-2000:] or 'no error output'}",
            tool="pg_restore",
            returncode=code,
            stderr=stderr,
        )
    duration = time.monotonic() - started
    if log:
        log(f"pg_restore finished in {duration:.1f} s ({human_bytes(progress.loaded_bytes)} of table data seen loading)")
    return PgRestoreResult(duration, progress.loaded_bytes, stderr)


class _Feeder:
    """Runs ``feed`` on a thread into the tool's standard input, then closes it; keeps the first error."""

    def __init__(self, proc, feed: Feed):
        self._proc = proc
        self._feed = feed
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="pg_restore-feed", daemon=True)

    def start(self) -> "_Feeder":
        self._thread.start()
        return self

    def _run(self) -> None:
        stdin = self._proc.stdin

        def write_all(data: bytes) -> None:
            view = memoryview(data)
            while view:
                written = stdin.write(view)
                view = view[written if written is not None else len(view):]

        try:
            self._feed(write_all)
        except BaseException as exc:  # raised to the caller after pg_restore has ended
            self.error = exc
            if not isinstance(exc, BrokenPipeError):
                self._proc.kill()  # never let pg_restore finish on a stream that is known to be wrong
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def join(self) -> None:
        self._thread.join()

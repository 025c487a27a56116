"""One backup of one database: consistent snapshot, pg_dump, streaming write, row counts.

The steps, in order:
1. check the backup directory is writable and clear stale temporary files of killed runs;
2. connect, refuse when pg_dump is older than the server;
3. open a REPEATABLE READ transaction and export its snapshot; read the table list and catalog counts
   *in that snapshot*;
4. run ``pg_dump -Fc -Z0 --snapshot=...`` (no double compression) and stream it through the writer, while
   a thread reads the file back from disk behind the writer (:mod:`loyalty_ops.lib.backup.readback`):
   hashes it, decompresses it and walks the whole archive, which is what the blocking checks need, and
   counts every table's rows in the same walk (``count(*)`` in the same snapshot
   is the fallback), so a restore can later be checked against exact numbers and each table is read once.
   An encrypted backup cannot be read back without its key: its compressed stream is checked (and its
   rows counted) in the same way just before encryption (:mod:`loyalty_ops.lib.backup.sealed_checks`).
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional

from loyalty_ops.lib.backup.encryption import SealedCompressor, parse_recipients, seal_bytes
from loyalty_ops.lib.backup.globals import (
    GlobalsDump,
    can_read_role_passwords,
    database_properties,
    dump_globals,
    globals_filename,
)
from loyalty_ops.lib.backup.integrity import inspect_archive, lower_this_thread, missing_from_toc
from loyalty_ops.lib.backup.sealed_checks import InPassInspection, in_pass_record
from loyalty_ops.lib.backup.naming import MANIFEST_SUFFIX, SIDECAR_SUFFIX, BackupName, backup_name
from loyalty_ops.lib.backup.row_counts import counts_from_stream
from loyalty_ops.lib.backup.stream import BackupWriteError, WrittenFile, remove_stale_partials, sidecar_text, stream_to_file
from loyalty_ops.lib.backup.tempfiles import Claim, claim_path, write_bytes_atomically
from loyalty_ops.lib.pg import catalog
from loyalty_ops.lib.pg.catalog import TableRef
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.session import connect
from loyalty_ops.lib.pg.tools import PgToolRunner, ToolError, parse_version
from loyalty_ops.lib.progress import ProgressSnapshot


class BackupError(RuntimeError):
    """A backup could not be taken; the message says which step failed and what to check."""


@dataclass(frozen=True)
class BackupRequest:
    backup_dir: Path
    compression: str = "gzip"
    compression_level: Optional[int] = None
    compression_threads: int = 0
    progress_interval_s: float = 10.0
    row_counts: str = "stream"  # "stream": from the dump stream; "count": count(*) in the snapshot
    max_rate_mbps: Optional[float] = None  # cap on the dump stream (MB/s), enforced by back-pressure
    nice: int = 0  # lower CPU priority (1-19) for pg_dump (host runner) and our compressor
    age_recipients: Optional[str] = None  # encrypt to these age public keys (encryption.py): ``.dump.gz.age``


@dataclass
class BackupResult:
    name: BackupName
    file: WrittenFile
    server_version: str
    pg_dump_version: str
    tables: list[TableRef]
    row_counts: dict[str, int]
    catalog_counts: dict[str, int]
    expected_raw_bytes: int
    runner: str
    timings: dict[str, float] = field(default_factory=dict)
    catalog_details: dict = field(default_factory=dict)  # catalog.snapshot_details: materialized views, locale
    row_counts_source: str = "count"  # "dump_stream", "dump_stream+count" or "count" (row_counts.py)
    row_counts_note: str = ""
    source: dict = field(default_factory=dict)  # replication_state: {"standby": bool, "lag_s": float | None}
    globals_dump: Optional["GlobalsDump"] = None  # the cluster globals written beside the backup (globals.py)
    globals_path: Optional[Path] = None
    database_properties: dict = field(default_factory=dict)  # globals.database_properties: owner, grants, settings
    in_pass_checks: Optional[dict] = None  # an encrypted backup's plaintext checks (sealed_checks.in_pass_record)
    read_back_checks: Optional[dict] = None  # the checks of the file read back as it was written (readback.py)

    @property
    def path(self) -> Path:
        return self.file.path


def check_backup_dir(backup_dir: Path) -> None:
    """Create the directory if needed and prove we can write there, before any dump starts."""
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"LOYALTY_BACKUP_DIR {backup_dir} cannot be created: {exc.strerror}") from None
    if not backup_dir.is_dir():
        raise BackupError(f"LOYALTY_BACKUP_DIR {backup_dir} is not a directory")
    probe = backup_dir / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"  # pids repeat across containers
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BackupError(
            f"LOYALTY_BACKUP_DIR {backup_dir} is not writable ({exc.strerror}); "
            "fix its permissions or point LOYALTY_BACKUP_DIR elsewhere"
        ) from None


def check_tool_versions(pg_dump_version: str, server: tuple[int, int]) -> None:
    tool = parse_version(pg_dump_version)
    if tool[0] < server[0]:
        raise BackupError(
            f"pg_dump {tool[0]}.{tool[1]} is older than the server (PostgreSQL {server[0]}.{server[1]}); "
            f"pg_dump cannot dump a newer server. Install postgresql-client-{server[0]} or set LOYALTY_PG_BIN_DIR."
        )


def claim_backup_name(
    backup_dir: Path, database: str, taken_at: datetime, compression: str, *, max_seconds: int = 3600,
    encrypted: bool = False,
) -> tuple[BackupName, Claim]:
    """Claim the first free backup name at or after ``taken_at`` for this run.

    Two runs in the same second (a manual materialization beside the nightly one, a second deployment
    on the same volume) get names one second apart: a name is taken while its backup, sidecar or
    manifest exists or another live run holds its claim. The claim is atomic, so no run ever replaces
    another's backup.
    """
    for offset in range(max_seconds):
        name = backup_name(database, taken_at + timedelta(seconds=offset), compression, encrypted=encrypted)
        final = backup_dir / name.filename
        claim = claim_path(
            final,
            also_free=(Path(f"{final}{SIDECAR_SUFFIX}"), Path(f"{final}{MANIFEST_SUFFIX}"), backup_dir / globals_filename(name)),
        )
        if claim is not None:
            return name, claim
    raise BackupError(
        f"no free backup name in LOYALTY_BACKUP_DIR {backup_dir} within {max_seconds} s of {taken_at:%Y-%m-%d %H:%M:%S}: "
        "every name is taken by another backup or a run in progress; check for runaway backup runs"
    )


def take_backup(
    spec: ConnectionSpec,
    runner: PgToolRunner,
    request: BackupRequest,
    *,
    taken_at: Optional[datetime] = None,
    on_progress: Optional[Callable[[ProgressSnapshot], None]] = None,
    open_sink: Optional[Callable[[BackupName, int], Optional[Callable[[bytes], None]]]] = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> BackupResult:
    """Take one backup: the file, its ``.sha256`` sidecar and its manifest, all or nothing.

    The backup's name is claimed first (see ``claim_backup_name``); the file gets that name only after
    its sidecar and manifest are written. ``open_sink(name, expected_raw_bytes)``, called just before
    pg_dump starts with the claimed name, may return a callable that receives each compressed block as
    it is written (a streamed offsite upload).
    """
    t0 = time.monotonic()
    backup_dir = Path(request.backup_dir)
    check_backup_dir(backup_dir)
    for stale in remove_stale_partials(backup_dir):
        log(f"removed temporary file {stale.name} left by a killed earlier run")
    recipients = parse_recipients(request.age_recipients) if request.age_recipients else None
    wanted = backup_name(spec.dbname, taken_at or datetime.now(timezone.utc), request.compression, encrypted=bool(recipients))
    try:
        name, claim = claim_backup_name(
            backup_dir, spec.dbname, wanted.taken_at, request.compression, encrypted=bool(recipients)
        )
    except OSError as exc:
        raise BackupError(
            f"cannot claim a backup name in LOYALTY_BACKUP_DIR: {exc.strerror}; {_disk_hint(exc, backup_dir)}"
        ) from None
    if name != wanted:
        log(f"{wanted.filename} is taken (another backup in the same second); this backup is {name.filename}")
    try:
        try:
            return _dump_to_claimed_name(spec, runner, request, name, claim.path, t0, on_progress, open_sink, log)
        except BaseException:
            if not claim.path.exists():  # the backup was not published: its globals file goes too
                (backup_dir / globals_filename(name)).unlink(missing_ok=True)
            raise
    except BackupWriteError as exc:
        raise BackupError(
            f"the backup could not be written: {exc.strerror}; {_disk_hint(exc, backup_dir)}. "
            f"Nothing was left under the name {name.filename}."
        ) from None
    finally:
        claim.release()


def replication_state(conn) -> dict:
    """Whether the server being dumped is a standby and, if so, how far behind its primary it was when the
    dump's snapshot was taken: 0 when it had replayed all the WAL it received, else the age of the last
    transaction it replayed; None when it cannot tell (nothing replayed yet)."""
    standby, lag = conn.execute(
        "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() THEN NULL "
        "WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
        "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END"
    ).fetchone()
    return {"standby": bool(standby), "lag_s": None if lag is None else max(float(lag), 0.0)}


class _Beside:
    """Runs ``work`` on a thread beside the dump; :meth:`result` waits for it and returns (or raises) its outcome."""

    def __init__(self, name: str, work: Callable[[], object]):
        self._outcome: list = []
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            self._outcome.append(("ok", work()))
        except BaseException as exc:  # re-raised by result()
            self._outcome.append(("error", exc))

    def result(self):
        self._thread.join()
        kind, value = self._outcome[0]
        if kind == "error":
            raise value
        return value


READ_BACK_BYTES = 256 * 1024  # compressed bytes per read of the read-back: about 1 MB of archive per walk step


def _read_back(request: BackupRequest, final_path: Path):
    """The check of the file as it is written (readback.py): hash, decompress, walk the whole archive."""

    def check(handle):
        if request.nice:
            lower_this_thread(request.nice)
        return inspect_archive(final_path, None, source=handle, compression=request.compression,
                               read_bytes=READ_BACK_BYTES, nice=request.nice)

    return check


def _lower_process_priority(pid: int, nice: int, log: Callable[[str], None]) -> None:
    """Lower pg_dump's CPU priority (the host runner's process; a container's is not ours to change)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(os.getpriority(os.PRIO_PROCESS, pid) + nice, 19))
    except OSError as exc:
        log(f"could not lower pg_dump's CPU priority: {exc.strerror}")


def _disk_hint(exc: OSError, backup_dir: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space in LOYALTY_BACKUP_DIR ({backup_dir}) or point it elsewhere"
    return f"check LOYALTY_BACKUP_DIR ({backup_dir}): permissions, mount, disk health"


def _dump_to_claimed_name(
    spec: ConnectionSpec,
    runner: PgToolRunner,
    request: BackupRequest,
    name: BackupName,
    final_path: Path,
    t0: float,
    on_progress: Optional[Callable[[ProgressSnapshot], None]],
    open_sink: Optional[Callable[[BackupName, int], Optional[Callable[[bytes], None]]]],
    log: Callable[[str], None],
) -> BackupResult:
    from loyalty_ops.lib.backup.manifest import manifest_for, manifest_path  # manifest.py imports this module

    timings: dict[str, float] = {}
    pg_dump_version = runner.tool_version("pg_dump")

    with connect(spec, autocommit=False, error=BackupError) as conn:
        server = catalog.server_version(conn)
        check_tool_versions(pg_dump_version, server)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        tables = catalog.list_user_tables(conn)
        counts_of_catalog = catalog.catalog_counts(conn)
        catalog_details = catalog.snapshot_details(conn)
        expected = catalog.estimated_dump_bytes(conn)
        source_state = replication_state(conn)
        properties = database_properties(conn, spec.dbname)
        recipients = parse_recipients(request.age_recipients) if request.age_recipients else None
        seal_globals = (lambda data: seal_bytes(data, recipients)) if recipients else None
        passwords = can_read_role_passwords(conn)
        # pg_dumpall runs beside pg_dump (its own process and connection; the globals are not in any snapshot)
        globals_said: list[str] = []  # its log lines, said from this thread once it is done
        globals_job = _Beside("cluster-globals", lambda: dump_globals(
            runner, conn, spec.dbname, seal=seal_globals, log=globals_said.append, passwords=passwords))
        timings["prepare_s"] = time.monotonic() - t0
        log(
            f"dumping {spec.redacted()} (PostgreSQL {server[0]}.{server[1]}, {len(tables)} tables, "
            f"~{expected} bytes of table data) to {final_path} with {runner.description}"
        )

        # Row counts exactly as the dump holds them: from the one walk of the archive (the file read back as it
        # is written, or an encrypted backup's stream just before encryption; each table is read once, by
        # pg_dump), or with count(*) in the exported snapshot while pg_dump runs (LOYALTY_BACKUP_ROW_COUNTS=count).
        row_counts: dict[str, int] = {}
        count_errors: list[BaseException] = []
        read_back = _read_back(request, final_path) if not recipients else None
        counts_from = {"source": "count", "note": "count(*) in the dump's snapshot (LOYALTY_BACKUP_ROW_COUNTS=count)"}

        def _count() -> None:
            try:
                row_counts.update(catalog.count_rows(conn, tables))
            except BaseException as exc:  # reported after the dump
                count_errors.append(exc)

        on_block = open_sink(name, expected) if open_sink is not None else None
        proc = runner.start(
            "pg_dump",
            ["--format=custom", "--compress=0", "--no-password", f"--snapshot={snapshot_id}"],
            database=spec.dbname,
        )
        if request.nice and isinstance(getattr(proc, "pid", None), int):
            _lower_process_priority(proc.pid, request.nice, log)
        counter = threading.Thread(target=_count, name="snapshot-row-counts", daemon=True)
        if request.row_counts != "stream":
            counter.start()

        def _finish() -> None:
            code = proc.wait()
            if code != 0:
                stderr = proc.stderr_text().strip()
                raise ToolError(
                    f"pg_dump failed with exit code {code}: {stderr[-2000:] or 'no error output'}",
                    tool="pg_dump",
                    returncode=code,
                    stderr=stderr,
                )

        results: list[BackupResult] = []
        globals_path = final_path.with_name(globals_filename(name))
        # Encrypted: the checks that need plaintext read the compressed stream here, before encryption.
        in_pass = InPassInspection(request.compression, runner.start("pg_restore", ["--list"], stdin=True, stdout=True),
                                   label=f"{name.filename} before encryption", nice=request.nice) if recipients else None
        seal = (lambda compressor: SealedCompressor(compressor, recipients, tap=in_pass.feed)) if in_pass else None

        def _manifest(written: WrittenFile) -> dict[Path, str]:
            """The manifest, written before the backup gets its name: a backup never appears without it."""
            checked = written.read_back
            inspection = in_pass.finish() if in_pass is not None else None
            walked = checked if checked is not None else inspection  # the one walk of the archive: rows too
            counted = None
            if walked is not None and request.row_counts == "stream":
                summary = walked.archive
                counted = counts_from_stream(summary.row_counts if summary else None, walked.archive_error, conn, tables)
            if counted is not None:
                row_counts.update(counted.counts)
                counts_from.update(source=counted.source, note=counted.note)
            if counter.ident:
                counter.join()
            if count_errors:
                raise BackupError(f"counting rows in the dump's snapshot failed: {count_errors[0]}")
            timings["dump_s"] = written.duration_s
            try:
                roles = globals_job.result()
                for line in globals_said:
                    log(line)
            except ToolError as exc:
                raise BackupError(f"dumping the cluster globals (roles) failed: {exc} (target {spec.redacted()})") from None
            timings["globals_s"] = roles.duration_s
            timings["read_back_wait_s"] = written.read_back_wait_s
            in_pass_checks = None
            if inspection is not None:
                missing = missing_from_toc(inspection.toc_text or "", tables) if not inspection.toc_error else []
                in_pass_checks = in_pass_record(inspection, missing)
            read_back_checks = None
            if checked is not None:  # the table of contents is listed by the checks, against the manifest as stored
                read_back_checks = in_pass_record(checked, [], when="from the file on disk as it was written")
                for key in ("toc_error", "toc_entries", "missing_tables"):
                    read_back_checks.pop(key, None)
            results.append(
                BackupResult(
                    name=name,
                    file=written,
                    server_version=f"{server[0]}.{server[1]}",
                    pg_dump_version=pg_dump_version,
                    tables=tables,
                    row_counts=row_counts,
                    row_counts_source=counts_from["source"],
                    row_counts_note=counts_from["note"],
                    source=source_state,
                    catalog_counts=counts_of_catalog,
                    catalog_details=catalog_details,
                    expected_raw_bytes=expected,
                    runner=runner.description,
                    timings=timings,
                    globals_dump=roles,
                    globals_path=globals_path,
                    database_properties=properties,
                    in_pass_checks=in_pass_checks,
                    read_back_checks=read_back_checks,
                )
            )
            # The globals file before the manifest and the backup's name; the sidecar gets its line too, so
            # `sha256sum -c FILE.sha256` checks both files.
            try:
                write_bytes_atomically(globals_path, roles.content)
            except OSError as exc:
                raise BackupWriteError("writing the cluster globals", globals_path, exc) from exc
            sidecar = Path(f"{final_path}{SIDECAR_SUFFIX}")
            return {
                manifest_path(final_path): manifest_for(results[0]).to_json(),
                sidecar: sidecar_text(written.sha256, final_path.name) + sidecar_text(roles.sha256, globals_path.name),
            }

        try:
            assert proc.stdout is not None
            stream_to_file(
                proc.stdout,
                final_path,
                compression=request.compression,
                level=request.compression_level,
                threads=request.compression_threads,
                expected_raw_bytes=expected,
                on_progress=on_progress,
                progress_interval_s=request.progress_interval_s,
                finish=_finish,
                on_block=on_block,
                companions=_manifest,
                max_rate_bps=request.max_rate_mbps * 1e6 if request.max_rate_mbps else None,
                nice=request.nice,
                seal=seal,
                read_back=read_back,
            )
        except ToolError as exc:
            raise BackupError(f"{exc} (target {spec.redacted()}; no backup file was written)") from None
        except BaseException:
            proc.kill()
            if in_pass is not None:
                in_pass.abort()
            raise
        finally:
            if counter.ident:
                counter.join()
        conn.rollback()

    timings["total_s"] = time.monotonic() - t0
    return results[0]

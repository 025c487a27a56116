"""barman-cloud, the engine that moves the bytes: its argument lists, its environment, and what it reports.

Secrets never reach an argument list: the AWS keys and the PostgreSQL password go to the engine's
processes through their environment (boto3 and libpq read them there). The commands are run by absolute
path from a given directory (this installation's console scripts on the host; the database server's own
install for ``archive_command`` and ``restore_command``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from loyalty_ops.lib.pitr.location import PitrLocation
from loyalty_ops.lib.pitr.options import ArchiveOptions, BackupOptions

_STARTING = re.compile(r"Starting backup '([^']+)'")


class EngineError(RuntimeError):
    """A barman-cloud command failed; the message has the command's name, exit code and last lines."""

    def __init__(self, tool: str, returncode: int, output: str):
        self.tool, self.returncode, self.output = tool, returncode, output
        tail = "\n".join(output.strip().splitlines()[-8:])
        super().__init__(f"barman-cloud-{tool} failed with exit code {returncode}: {tail or '(no output)'}")


@dataclass(frozen=True)
class S3Access:
    """How the engine reaches the bucket. ``credentials`` (AWS_* variables) go to the environment only."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    sse: Optional[str] = None
    kms_key_id: Optional[str] = None
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)

    def endpoint_args(self) -> list[str]:
        return ["--endpoint-url", self.endpoint_url] if self.endpoint_url else []

    def encryption_args(self) -> list[str]:
        if not self.sse:
            return []
        args = ["-e", self.sse]
        if self.sse == "aws:kms" and self.kms_key_id:
            args += ["--sse-kms-key-id", self.kms_key_id]
        return args

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.credentials.items() if v}
        if self.region:
            env.setdefault("AWS_DEFAULT_REGION", self.region)
        return env


def _quoted(argv: Sequence[str]) -> str:
    return " ".join(a if a in ("%p", "%f") else shlex.quote(a) for a in argv)


def archive_argv(server_bin_dir: str, location: PitrLocation, access: S3Access, options: ArchiveOptions = ArchiveOptions(),
                 wal_path: str = "%p") -> list[str]:
    """The engine command that archives one WAL segment, behind its CPU priority (``nice``)."""
    return [*options.priority_prefix(), f"{server_bin_dir.rstrip('/')}/barman-cloud-wal-archive", *access.endpoint_args(),
            *access.encryption_args(), *options.compression_args(), location.url, location.server_name, wal_path]


def archive_command(server_bin_dir: str, location: PitrLocation, access: S3Access,
                    options: ArchiveOptions = ArchiveOptions()) -> str:
    """The database server's ``archive_command`` (a shell command PostgreSQL runs per WAL segment): the one
    builder of the generated settings, the docker-compose text, the local clusters and the benchmark."""
    return _quoted(archive_argv(server_bin_dir, location, access, options))


# Timeline 1 is where every cluster starts; a history file is only ever written for a timeline a promotion
# created (2 and up), so recovery's question for 00000001.history is answered "no" without asking the bucket.
FIRST_TIMELINE_HISTORY = "00000001.history"
# The suffix of the segment restore_command last took from the spool (kept for PostgreSQL's second request).
TAKEN_SUFFIX = ".taken"


def restore_command(server_bin_dir: str, location: PitrLocation, access: S3Access, spool_dir: Optional[str] = None,
                    prefetch: int = 16) -> str:
    """``restore_command`` of a recovering instance: fetch one WAL file from the archive. With ``spool_dir`` the
    engine fetches ``prefetch`` segments at a time in parallel (the one asked for and the next ones into the
    spool), a segment already in the spool is moved into place by the shell without starting the engine
    (about 0.4 s of CPU for Python and boto3 per start), and timeline 1's history file, which cannot exist, is
    not asked for.

    The segment last taken from the spool stays there as ``<name>.taken`` (a hard link, the one before it is
    removed): at the end of recovery PostgreSQL asks for the last segment once more, and gets it from there
    without an engine start either. A segment's content never changes under its name, so that copy is the
    segment.

    The engine itself delivers from the spool the same way (a move, before anything else), and PostgreSQL
    runs ``restore_command`` one call at a time, after the engine that filled the spool has waited for all its
    downloads and exited, so a file in the spool is always whole when the next call finds it."""
    parallel = ["--parallel", str(prefetch), "--spool-dir", spool_dir] if spool_dir and prefetch > 0 else []
    argv = [f"{server_bin_dir.rstrip('/')}/barman-cloud-wal-restore", *access.endpoint_args(), *parallel,
            location.url, location.server_name, "%f", "%p"]
    if not parallel:
        return _quoted(argv)
    spool = shlex.quote(spool_dir.rstrip('/'))  # type: ignore[union-attr]
    spooled, taken = f"{spool}/%f", f"{spool}/%f{TAKEN_SUFFIX}"
    return (f"test %f != {FIRST_TIMELINE_HISTORY} && {{ {{ test -f {spooled} && {{ rm -f {spool}/*{TAKEN_SUFFIX}; "
            f"ln -f {spooled} {taken} 2>/dev/null; mv -f {spooled} %p; }}; }} || "
            f"{{ test -f {taken} && cp {taken} %p; }} || {_quoted(argv)}; }}")


def _parse_time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class BaseBackup:
    """One base backup as the engine lists it."""

    backup_id: str
    status: str
    begin_time: Optional[datetime]
    end_time: Optional[datetime]
    begin_wal: Optional[str]
    end_wal: Optional[str]
    begin_lsn: Optional[str]
    end_lsn: Optional[str]
    timeline: Optional[int]
    cluster_size: int
    compression: Optional[str]
    name: Optional[str] = None

    @property
    def complete(self) -> bool:
        return self.status == "DONE"

    @classmethod
    def from_engine(cls, info: Mapping) -> "BaseBackup":
        return cls(
            backup_id=str(info["backup_id"]),
            status=str(info.get("status") or ""),
            begin_time=_parse_time(info.get("begin_time_iso")),
            end_time=_parse_time(info.get("end_time_iso")),
            begin_wal=info.get("begin_wal"),
            end_wal=info.get("end_wal"),
            begin_lsn=info.get("begin_xlog"),
            end_lsn=info.get("end_xlog"),
            timeline=info.get("timeline"),
            cluster_size=int(info.get("cluster_size") or 0),
            compression=info.get("compression"),
            name=info.get("backup_name"),
        )


@dataclass(frozen=True)
class EngineRun:
    tool: str
    returncode: int
    output: str
    duration_s: float


Tick = Callable[[float, str], None]  # (elapsed seconds, the engine's last line)


def run_engine(argv: list[str], env: Mapping[str, str], *, tick: Optional[Tick] = None, interval_s: float = 10.0,
               timeout_s: float = 6 * 3600) -> EngineRun:
    """Runs one engine command, calling ``tick`` at least every ``interval_s`` while it runs."""
    tool = Path(argv[0]).name.removeprefix("barman-cloud-")
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            try:
                proc.wait(timeout=interval_s)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - started
                if elapsed > timeout_s:
                    proc.kill()
                    proc.wait()
                    raise EngineError(tool, -9, f"timed out after {timeout_s:.0f} s\n" + "\n".join(lines[-8:]))
                if tick is not None:
                    tick(elapsed, lines[-1] if lines else "")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    reader.join(timeout=5)
    return EngineRun(tool, proc.returncode, "\n".join(lines), time.monotonic() - started)


@dataclass(frozen=True)
class BarmanCloud:
    """The engine's commands as run on this machine."""

    location: PitrLocation
    access: S3Access
    bin_dir: str
    base_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def argv(self, tool: str, *args: str) -> list[str]:
        return [str(Path(self.bin_dir) / f"barman-cloud-{tool}"), *self.access.endpoint_args(), *args]

    def env(self, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        return {**self.base_env, **self.access.env(), **(extra or {})}

    def run(self, tool: str, *args: str, extra_env: Optional[Mapping[str, str]] = None, tick: Optional[Tick] = None,
            interval_s: float = 10.0, check: bool = True) -> EngineRun:
        result = run_engine(self.argv(tool, *args), self.env(extra_env), tick=tick, interval_s=interval_s)
        if check and result.returncode != 0:
            raise EngineError(tool, result.returncode, result.output)
        return result

    def list_backups(self) -> list[BaseBackup]:
        """Every base backup of the server, oldest first, as the engine lists them."""
        out = self.run("backup-list", "--format", "json", self.location.url, self.location.server_name).output
        start = out.find("{")
        data = json.loads(out[start:]) if start >= 0 else {"backups_list": []}
        backups = [BaseBackup.from_engine(info) for info in data.get("backups_list", [])]
        return sorted(backups, key=lambda b: b.backup_id)

    def backup(self, libpq_env: Mapping[str, str], *, options: BackupOptions = BackupOptions(), name: Optional[str] = None,
               tick: Optional[Tick] = None, interval_s: float = 10.0) -> tuple[str, EngineRun]:
        """Takes a base backup (the engine connects with ``libpq_env``: PGHOST, PGPASSWORD, ...; it must run
        where the data directory is readable). Returns the new backup's id and the run."""
        args = ["-v", "--immediate-checkpoint", *options.args(), *self.access.encryption_args()]
        if name:
            args += ["-n", name]
        run = self.run("backup", *args, self.location.url, self.location.server_name, extra_env=libpq_env, tick=tick,
                       interval_s=interval_s)
        found = _STARTING.search(run.output)
        if not found:
            raise EngineError("backup", run.returncode, "the engine did not say which backup it took:\n" + run.output)
        return found.group(1), run

    def restore(self, backup_id: str, destination: Path, *, tick: Optional[Tick] = None, interval_s: float = 10.0) -> EngineRun:
        """Downloads and unpacks base backup ``backup_id`` into ``destination`` (a new, empty directory)."""
        return self.run("restore", self.location.url, self.location.server_name, backup_id, str(destination),
                        tick=tick, interval_s=interval_s)

    def fetch_wal(self, wal_name: str, directory: Path, count: int) -> EngineRun:
        """Fetches WAL segment ``wal_name`` and up to ``count - 1`` after it (those in the bucket) into
        ``directory`` (the engine's own ``--parallel`` download). The files are whole only once this has returned
        with exit code 0."""
        return self.run("wal-restore", "--parallel", str(max(count, 1)), "--spool-dir", str(directory), self.location.url,
                        self.location.server_name, wal_name, str(Path(directory) / wal_name), check=False)

    def retention_dry_run(self, window_days: int) -> EngineRun:
        """What the engine's own recovery-window policy would delete (``--dry-run``: nothing is deleted)."""
        return self.run("backup-delete", "-v", "--dry-run", "-r", f"RECOVERY WINDOW OF {int(window_days)} DAYS",
                        self.location.url, self.location.server_name)

    def delete_backup(self, backup_id: str) -> EngineRun:
        """Deletes one base backup and the WAL only it needed, through the engine."""
        return self.run("backup-delete", "-v", "-b", backup_id, self.location.url, self.location.server_name)

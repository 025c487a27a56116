"""Where the restore drill restores: the production server (the default), another server (a staging server),
or a scratch PostgreSQL this machine starts for the drill and removes after it.

A drill on the production server competes with production for CPU and disk for as long as pg_restore runs.
The other two placements leave production only the reads of the backup's own checks and one size query.

- ``server``: the drill connects to ``LOYALTY_DRILL_HOST`` (port, user, password, sslmode of its own; the
  other libpq settings, such as the passfile and TLS files, are the production connection's). Its major
  version must be the backup's or newer.
- ``scratch``: ``initdb`` of the backup's major version into a private directory (``LOYALTY_DRILL_SCRATCH_DIR``),
  a server reachable only through a Unix socket in that directory (no TCP, trust for its owner alone), and
  settings for a throwaway copy (no fsync, minimal WAL). Stopped and removed after the drill, pass or fail.

Owners and privileges name roles, and roles live in the cluster, not in the dump: on a server that is not
production the drill restores with ``--no-owner --no-privileges``. The comparison with the manifest (rows,
catalog counts, materialized views) does not depend on either.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping, Optional

from loyalty_ops.lib.pg.tools import RUNUSER
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.session import connect
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.restore.drill import DrillResult, run_drill
from loyalty_ops.lib.restore.environment import RestoreEnvironment
from loyalty_ops.lib.restore.errors import RestoreStepError
from loyalty_ops.lib.restore.plan import BackupRef, drill_database_name

PLACEMENTS = ("production", "server", "scratch")
SERVER_BIN_DIRS = "/usr/lib/postgresql/{major}/bin"
SCRATCH_SETTINGS = (
    "listen_addresses=''",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "wal_level=minimal",
    "max_wal_senders=0",
    "max_connections=20",
    "maintenance_work_mem=256MB",
    "autovacuum=off",
)
SCRATCH_SUPERUSER = "postgres"


@dataclass(frozen=True)
class DrillPlacement:
    kind: str = "production"  # one of PLACEMENTS
    server: Optional[ConnectionSpec] = None  # "server": where the drill restores (its dbname is not used)
    scratch_dir: Optional[Path] = None  # "scratch": parent directory of the throwaway cluster (default: the system's)
    bin_dir: Optional[str] = None  # client tools for "server" (LOYALTY_PG_BIN_DIR); "scratch" uses its own
    tool_env: Mapping[str, str] = field(default_factory=dict)  # PATH, HOME, locale for the tools' processes

    def __post_init__(self) -> None:
        if self.kind not in PLACEMENTS:
            raise ValueError(f"drill placement must be one of {', '.join(PLACEMENTS)}, got {self.kind!r}")
        if self.kind == "server" and (self.server is None or not self.server.host):
            raise ValueError("drill placement 'server' needs the drill server's host (LOYALTY_DRILL_HOST)")

    def describe(self) -> str:
        if self.kind == "server":
            assert self.server is not None
            return f"the drill server {self.server.redacted().rsplit('/', 1)[0]}"
        if self.kind == "scratch":
            return f"a scratch PostgreSQL started for the drill in {self.scratch_dir or tempfile.gettempdir()}"
        return "the production server"


def server_major(spec: ConnectionSpec) -> int:
    with connect(spec, connect_timeout=min(spec.connect_timeout, 10)) as conn:
        return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


class ScratchServer:
    """A throwaway PostgreSQL cluster for one drill. When this process is root, the cluster runs as the
    ``postgres`` OS user (initdb and the server refuse root)."""

    def __init__(self, major: int, parent_dir: Optional[Path] = None, *, log: Callable[[str], None] = lambda _m: None):
        self.major = major
        self.parent_dir = Path(parent_dir) if parent_dir else Path(tempfile.gettempdir())
        self.bin_dir = SERVER_BIN_DIRS.format(major=major)
        self.base: Optional[Path] = None
        self._log = log

    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    def _as_owner(self) -> list[str]:
        return [RUNUSER, "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, args: list[str], step: str, timeout: float = 120) -> None:
        try:
            subprocess.run(self._as_owner() + args, check=True, capture_output=True, text=True, timeout=timeout)
        except subprocess.CalledProcessError as exc:
            tail = (exc.stderr or exc.stdout or "").strip()[-1500:]
            raise RestoreStepError(step, f"{Path(args[0]).name} failed (exit {exc.returncode}): {tail or 'no output'}") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RestoreStepError(step, f"{Path(args[0]).name} could not run: {exc}") from None

    def start(self) -> ConnectionSpec:
        step = "start scratch server"
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (Path(self.bin_dir) / tool).exists():
                raise RestoreStepError(
                    step,
                    f"the backup comes from PostgreSQL {self.major}, and its server programs are not installed here "
                    f"({self.bin_dir}/{tool} is missing): apt-get install postgresql-{self.major}, or set "
                    "LOYALTY_DRILL_PLACEMENT to production or server",
                )
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RestoreStepError(step, "running as root, and there is no 'postgres' OS user to run the scratch server as") from None
        self.parent_dir.mkdir(parents=True, exist_ok=True)
        self.base = Path(tempfile.mkdtemp(prefix="loyalty-drill-server-", dir=self.parent_dir))
        sock = self.base / "sock"
        sock.mkdir()
        if owner is not None:
            for path in (self.base, sock):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chmod(self.base, 0o700)
        if owner is not None and subprocess.run(self._as_owner() + ["test", "-w", str(self.base)], capture_output=True).returncode:
            raise RestoreStepError(
                step,
                f"the postgres OS user cannot reach {self.base}: a parent directory is closed to it; make every parent "
                "of LOYALTY_DRILL_SCRATCH_DIR searchable by it (chmod o+x) or choose another directory",
            )
        self._run(
            [f"{self.bin_dir}/initdb", "-D", str(self.data_dir), "-U", SCRATCH_SUPERUSER, "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            step,
        )
        options = " ".join([f"-c unix_socket_directories='{sock}'", "-c port=5432", *(f"-c {s}" for s in SCRATCH_SETTINGS)])
        self._run(
            [f"{self.bin_dir}/pg_ctl", "-D", str(self.data_dir), "-l", str(self.base / "server.log"), "-o", options,
             "-w", "-t", "60", "start"],
            step,
        )
        self._log(f"scratch PostgreSQL {self.major} started in {self.base} (Unix socket only)")
        return ConnectionSpec(host=str(sock), port=5432, user=SCRATCH_SUPERUSER, dbname="postgres")

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return (self.base / "server.log").read_text(errors="replace")[-limit:] if self.base else ""
        except OSError:
            return ""

    def stop(self) -> bool:
        """Stop the server and remove its directory; True when nothing is left."""
        if self.base is None:
            return True
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._as_owner() + [f"{self.bin_dir}/pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                capture_output=True, timeout=60,
            )
        shutil.rmtree(self.base, ignore_errors=True)
        gone = not self.base.exists()
        self._log(f"scratch PostgreSQL in {self.base} stopped and removed" if gone else f"could not remove {self.base}; remove it by hand")
        return gone


def _failed(env: RestoreEnvironment, ref: BackupRef, step: str, message: str, started: float, now: Optional[datetime]) -> DrillResult:
    result = DrillResult(
        passed=False, backup_filename=ref.filename or "", scratch_database=drill_database_name(now or datetime.now().astimezone()),
        failed_step=step, message=f"drill failed at step '{step}': {message}", scratch_dropped=True,
    )
    result.timings["total_s"] = time.monotonic() - started
    env.warn(result.message)
    return result


def drill_environment(env: RestoreEnvironment, server: ConnectionSpec, bin_dir: Optional[str], tool_env: Mapping[str, str]) -> RestoreEnvironment:
    """``env`` (production's) pointed at ``server`` for the scratch database; production stays the source."""
    spec = server.with_database(env.spec.dbname)
    return dataclasses.replace(
        env, spec=spec, runner=HostToolRunner(spec, bin_dir, base_env=tool_env), source_spec=env.source_spec or env.spec
    )


def run_placed_drill(
    env: RestoreEnvironment, ref: BackupRef, placement: DrillPlacement, *, jobs: int = 2, now: Optional[datetime] = None
) -> DrillResult:
    """The drill where ``placement`` says; ``env`` is production's. Never raises for a failed drill."""
    if placement.kind == "production":
        return run_drill(env, ref, jobs=jobs, now=now)
    started = time.monotonic()
    try:
        source_major = server_major(env.source_spec or env.spec)
    except Exception as exc:
        return _failed(env, ref, "check drill server", f"the production server's version could not be read: {exc}", started, now)
    if placement.kind == "server":
        assert placement.server is not None
        try:
            major = server_major(placement.server.with_database("postgres"))
        except Exception as exc:
            return _failed(env, ref, "check drill server", f"{placement.describe()} is not reachable: {exc}", started, now)
        if major < source_major:
            return _failed(
                env, ref, "check drill server",
                f"{placement.describe()} runs PostgreSQL {major}, older than the backup's server ({source_major}); "
                "a dump restores only into the same major version or a newer one",
                started, now,
            )
        drill_env = drill_environment(env, placement.server, placement.bin_dir, placement.tool_env)
        env.log(f"drill placement: {placement.describe()} (PostgreSQL {major}; the backup's server is {source_major})")
        result = run_drill(drill_env, ref, jobs=jobs, now=now, foreign_server=True)
        result.timings["total_s"] = time.monotonic() - started
        return result
    scratch = ScratchServer(source_major, placement.scratch_dir, log=env.log)
    try:
        t = time.monotonic()
        try:
            spec = scratch.start()
        except RestoreStepError as exc:
            return _failed(env, ref, exc.step, exc.detail, started, now)
        start_s = time.monotonic() - t
        drill_env = drill_environment(env, spec, scratch.bin_dir, placement.tool_env)
        env.log(f"drill placement: {placement.describe()} (PostgreSQL {source_major}, started in {start_s:.1f} s)")
        result = run_drill(drill_env, ref, jobs=jobs, now=now, foreign_server=True)
        result.timings["scratch_server_start_s"] = start_s
        if result.failed_step == "pg_restore":
            tail = scratch.log_tail(600).strip()
            if tail:
                result.message += f" (scratch server log: ...{tail})"
    finally:
        t = time.monotonic()
        removed = scratch.stop()
    result.timings["scratch_server_stop_s"] = time.monotonic() - t
    result.timings["total_s"] = time.monotonic() - started
    if not removed:
        result.notes.append(f"the scratch server's directory {scratch.base} could not be removed")
    return result

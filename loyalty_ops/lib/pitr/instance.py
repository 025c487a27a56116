"""A new PostgreSQL instance recovered from the archive: a new data directory on a free port, never over a
running cluster. It is prepared (recovery settings, ``recovery.signal``, owner and mode), started, watched
until recovery reaches its target and the instance is promoted, and stopped and removed on request.

When this process runs as root, the instance runs as the ``postgres`` OS user (the server refuses root)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping, Optional

import psycopg

from loyalty_ops.lib.backup.tempfiles import pid_alive
from loyalty_ops.lib.pg.tools import RUNUSER
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pitr.target import RecoveryRefused

RESTORED_LINE = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
RESTORE_POINT_LINE = re.compile(r"recovery stopping at restore point .*, time ([0-9-]+ [0-9:.]+[+-][0-9]+)")
LAST_COMMIT_LINE = re.compile(r"last completed transaction was at log time ([0-9-]+ [0-9:.]+[+-][0-9]+)")


class RecoveryFailed(RuntimeError):
    """The instance did not reach its target; the message carries the server log's last lines."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            return True
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_destination(data_dir: Path, port: int) -> None:
    """Refuses a data directory that is not empty and a port in use, before anything is written."""
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise RecoveryRefused(f"data directory {data_dir} is not empty: a restore only ever goes into a new, empty "
                              "directory; choose another data_dir")
    if not 1 <= port <= 65535:
        raise RecoveryRefused(f"port must be 1-65535, got {port}")
    if port_in_use(port):
        raise RecoveryRefused(f"port {port} is in use on 127.0.0.1: another server listens there; choose a free port "
                              "(the live server is never replaced)")


def default_os_user() -> Optional[str]:
    return "postgres" if os.geteuid() == 0 else None


def _quote_setting(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass
class ScratchInstance:
    """A recovering instance in ``base_dir`` (``data/``, ``sock/``, ``server.log``)."""

    base_dir: Path
    port: int
    server_bin_dir: str
    os_user: Optional[str] = field(default_factory=default_os_user)
    # The server's whole environment (PATH, HOME, locale and restore_command's AWS settings): given, never inherited.
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Server settings that win over the source's configuration (parse_instance_settings): memory for this
    # machine, preload libraries it does not have.
    settings: Mapping[str, str] = field(default_factory=dict)
    started_at: Optional[float] = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    @property
    def spool_dir(self) -> Path:
        """Where restore_command keeps the WAL segments it fetched ahead."""
        return self.base_dir / "walspool"

    def _as_user(self) -> list[str]:
        return [RUNUSER, "-u", self.os_user, "--"] if self.os_user and os.geteuid() == 0 else []

    def configure(self, restore_command: str, target_settings: Mapping[str, str]) -> None:
        """Writes the instance's settings and the recovery settings (they win over the source's: appended last)
        and ``recovery.signal``."""
        lines = ["", "# point-in-time recovery (loyalty_ops): a scratch instance, never archiving into the live archive",
                 *(f"{k} = {_quote_setting(v)}" for k, v in self.settings.items()),
                 f"restore_command = {_quote_setting(restore_command)}", "archive_mode = off", "hot_standby = on",
                 "ssl = off", "listen_addresses = '127.0.0.1'", f"port = {int(self.port)}",
                 f"unix_socket_directories = {_quote_setting(str(self.socket_dir))}"]
        lines += [f"{k} = {_quote_setting(v)}" for k, v in target_settings.items()]
        with open(self.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        for stale in ("standby.signal", "postmaster.pid", "postmaster.opts"):
            (self.data_dir / stale).unlink(missing_ok=True)
        (self.data_dir / "recovery.signal").touch()
        self.socket_dir.mkdir(exist_ok=True)
        self.spool_dir.mkdir(exist_ok=True)
        if self.os_user and os.geteuid() == 0:
            entry = pwd.getpwnam(self.os_user)
            for root, dirs, files in os.walk(self.base_dir):
                os.chown(root, entry.pw_uid, entry.pw_gid)
                for name in files:
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        os.chmod(self.data_dir, 0o700)

    def start(self) -> None:
        self.started_at = time.monotonic()
        subprocess.run(
            self._as_user() + [f"{self.server_bin_dir}/pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-W", "start"],
            env=dict(self.environment), check=True, capture_output=True, text=True,
        )

    def running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        return pid_alive(pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def restored_segments(self) -> int:
        try:
            return len(set(RESTORED_LINE.findall(self.log_file.read_text(errors="replace"))))
        except OSError:
            return 0

    def connect(self, spec: ConnectionSpec, dbname: str = "postgres") -> psycopg.Connection:
        local = ConnectionSpec(host="127.0.0.1", port=self.port, user=spec.user, password=spec.password or spec.passfile_password(),
                               dbname=dbname, sslmode="disable", connect_timeout=5)
        return psycopg.connect(**local.psycopg_kwargs(), autocommit=True)  # type: ignore[arg-type]

    def promote(self) -> None:
        """Asks the instance to end recovery now (``pg_ctl promote`` signals the postmaster; no database
        privilege is needed, unlike ``pg_promote()``)."""
        done = subprocess.run(self._as_user() + [f"{self.server_bin_dir}/pg_ctl", "-D", str(self.data_dir), "-W", "promote"],
                              env=dict(self.environment), capture_output=True, text=True)
        if done.returncode != 0:
            raise RecoveryFailed(f"recovery reached its target and paused there, but pg_ctl promote failed with exit code "
                                 f"{done.returncode}: {(done.stderr or done.stdout).strip()}. The data directory is whole "
                                 f"at the target: start it (pg_ctl -D {self.data_dir} start; it pauses at the target again) "
                                 f"and run pg_ctl -D {self.data_dir} promote as the server's OS user.\n{self.log_tail()}")

    def wait_until_promoted(self, spec: ConnectionSpec, *, tick: Optional[Callable[[str], None]] = None,
                            interval_s: float = 10.0, timeout_s: float = 6 * 3600, promote_when_paused: bool = False) -> dict:
        """Waits until recovery has reached its target and the instance accepts writes. Reports progress (WAL
        segments restored, replay position and time) at least every ``interval_s``. With ``promote_when_paused``
        (``recovery_target_action = pause``) it promotes the instance once recovery has paused at the target.
        Returns what was recovered (and ``promote_s``: from the pause to accepting writes)."""
        started = time.monotonic()
        last_tick = started
        replay: dict = {}
        promoted_at: Optional[float] = None
        while True:
            elapsed = time.monotonic() - started
            if not self.running() and elapsed > 1.0:
                raise RecoveryFailed(f"the recovering instance stopped before reaching its target:\n{self.log_tail()}")
            if elapsed > timeout_s:
                raise RecoveryFailed(f"recovery did not finish within {timeout_s:.0f} s:\n{self.log_tail()}")
            try:
                with self.connect(spec) as conn:
                    in_recovery, lsn, replayed_at, paused = conn.execute(
                        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
                        "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END"
                    ).fetchone()
                replay = {"replay_lsn": lsn, "replayed_to": replayed_at}
                if not in_recovery:
                    promote_s = time.monotonic() - promoted_at if promoted_at is not None else 0.0
                    return {**replay, "segments_restored": self.restored_segments(), "wait_s": elapsed, "promote_s": promote_s}
                if promote_when_paused and paused and promoted_at is None:  # only ever at the target
                    promoted_at = time.monotonic()
                    if tick is not None:
                        tick(f"recovery paused at its target (replayed to {replayed_at}, LSN {lsn}): promoting")
                    self.promote()
            except psycopg.OperationalError:
                pass  # not consistent yet: connections are refused until then
            except psycopg.errors.ObjectNotInPrerequisiteState:
                pass  # promoted between the two calls of the query ("recovery is not in progress"): asked again
            if tick is not None and time.monotonic() - last_tick >= interval_s:
                last_tick = time.monotonic()
                where = f", replayed to {replay['replayed_to']} (LSN {replay['replay_lsn']})" if replay.get("replay_lsn") else ""
                tick(f"recovering: {self.restored_segments()} WAL segment(s) restored{where}, {elapsed:.0f} s elapsed")
            time.sleep(0.25)

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(self._as_user() + [f"{self.server_bin_dir}/pg_ctl", "-D", str(self.data_dir), "-m", "immediate",
                                              "-w", "-t", "60", "stop"], capture_output=True)

    def remove(self) -> None:
        """Stops the instance and deletes its directory (the whole ``base_dir``)."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def recovered_time_from_log(log_text: str) -> Optional[datetime]:
    """What recovery stopped at, from the server log: the restore point's time, else the last transaction it
    applied (None when neither is logged)."""
    for pattern in (RESTORE_POINT_LINE, LAST_COMMIT_LINE):
        found = pattern.findall(log_text)
        if found:
            stamp = found[-1]
            return datetime.strptime(stamp + ("00" if re.search(r"[+-][0-9]{2}$", stamp) else ""), "%Y-%m-%d %H:%M:%S.%f%z")
    return None

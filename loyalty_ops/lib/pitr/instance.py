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
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Optional

import psycopg

from loyalty_ops.lib.backup.tempfiles import pid_alive
from loyalty_ops.lib.pg.tools import RUNUSER
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pitr.options import INSTANCE_LOG_SETTINGS, REPLAY_SETTINGS
from loyalty_ops.lib.pitr.target import RecoveryRefused

RESTORED_LINE = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
RESTORE_POINT_LINE = re.compile(r"recovery stopping at restore point .*, time ([0-9-]+ [0-9:.]+[+-][0-9]+)")
TIMESTAMPED_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:  (.*)$")
LAST_COMMIT_LINE = re.compile(r"last completed transaction was at log time ([0-9-]+ [0-9:.]+[+-][0-9]+)")


# How often recovery's progress is read while it runs (one query on an open connection), and how often a
# connection is tried until the instance accepts one (each refused try is a line in the server log).
POLL_S = 0.1
CONNECT_RETRY_S = 0.25


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
                 f"unix_socket_directories = {_quote_setting(str(self.socket_dir))}",
                 *(f"{k} = {_quote_setting(v)}" for k, v in {**INSTANCE_LOG_SETTINGS, **REPLAY_SETTINGS}.items())]
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

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_text()
        return "\n".join(text.splitlines()[-lines:]) if text else "(no server log)"

    def restored_segments(self) -> int:
        return len(set(RESTORED_LINE.findall(self.log_text())))

    def connect(self, spec: ConnectionSpec, dbname: str = "postgres") -> psycopg.Connection:
        local = ConnectionSpec(host="127.0.0.1", port=self.port, user=spec.user, password=spec.password or spec.passfile_password(),
                               dbname=dbname, sslmode="disable", connect_timeout=5)
        return psycopg.connect(**local.psycopg_kwargs(), autocommit=True)  # type: ignore[arg-type]

    def _pg_ctl_promote(self) -> subprocess.CompletedProcess:
        return subprocess.run(self._as_user() + [f"{self.server_bin_dir}/pg_ctl", "-D", str(self.data_dir), "-W", "promote"],
                              env=dict(self.environment), capture_output=True, text=True)

    def request_promotion_ahead(self) -> Optional[str]:
        """Asks a recovering instance to promote once recovery has reached its target (None, or why it could not).

        In archive recovery (``recovery.signal``, not a standby) PostgreSQL reads a promotion request only where
        replay waits: at the target, where ``recovery_target_action = pause`` stops, it finds the request at
        once and ends recovery as a promotion (without waiting for an end-of-recovery checkpoint), instead of
        noticing one sent after the pause on its next one-second check. Replay up to the target goes on as
        before, and a target the WAL does not reach still fails recovery."""
        done = self._pg_ctl_promote()
        return None if done.returncode == 0 else (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"

    def promote(self) -> None:
        """Asks the instance to end recovery now (``pg_ctl promote`` signals the postmaster; no database
        privilege is needed, unlike ``pg_promote()``)."""
        done = self._pg_ctl_promote()
        if done.returncode != 0:
            raise RecoveryFailed(f"recovery reached its target and paused there, but pg_ctl promote failed with exit code "
                                 f"{done.returncode}: {(done.stderr or done.stdout).strip()}. The data directory is whole "
                                 f"at the target: start it (pg_ctl -D {self.data_dir} start; it pauses at the target again) "
                                 f"and run pg_ctl -D {self.data_dir} promote as the server's OS user.\n{self.log_tail()}")

    def wait_until_promoted(self, spec: ConnectionSpec, *, tick: Optional[Callable[[str], None]] = None,
                            interval_s: float = 10.0, timeout_s: float = 6 * 3600, promote_at_target: bool = False) -> dict:
        """Waits until recovery has reached its target and the instance accepts writes. Reports progress (WAL
        segments restored, replay position and time) at least every ``interval_s``. With ``promote_at_target``
        (``recovery_target_action = pause``) the promotion is requested as soon as the instance accepts
        connections, so PostgreSQL promotes the moment it reaches the target; should recovery be found paused
        there all the same, it is promoted then. Returns what was recovered."""
        started = time.monotonic()
        last_tick = started
        replay: dict = {}
        requested_ahead = promoted_at_pause = False
        conn: Optional[psycopg.Connection] = None  # one connection, once the instance accepts them
        try:
            while True:
                elapsed = time.monotonic() - started
                if not self.running() and elapsed > 1.0:
                    raise RecoveryFailed(f"the recovering instance stopped before reaching its target:\n{self.log_tail()}")
                if elapsed > timeout_s:
                    raise RecoveryFailed(f"recovery did not finish within {timeout_s:.0f} s:\n{self.log_tail()}")
                try:
                    if conn is None or conn.closed:
                        conn = self.connect(spec)
                    in_recovery, lsn, replayed_at, paused = conn.execute(
                        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
                        "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END"
                    ).fetchone()
                    replay = {"replay_lsn": lsn, "replayed_to": replayed_at}
                    if not in_recovery:
                        return {**replay, "segments_restored": self.restored_segments(), "wait_s": elapsed}
                    if promote_at_target and not requested_ahead:
                        requested_ahead = True
                        refused = self.request_promotion_ahead()
                        if tick is not None and refused:
                            tick(f"requesting the promotion ahead failed ({refused}); it is requested at the target")
                    if promote_at_target and paused and not promoted_at_pause:  # only ever at the target
                        promoted_at_pause = True
                        if tick is not None:
                            tick(f"recovery paused at its target (replayed to {replayed_at}, LSN {lsn}): promoting")
                        self.promote()
                except psycopg.OperationalError:
                    if conn is not None:  # not consistent yet (connections are refused until then), or the connection was lost
                        conn.close()
                except psycopg.errors.ObjectNotInPrerequisiteState:
                    pass  # promoted between the two calls of the query ("recovery is not in progress"): asked again
                if tick is not None and time.monotonic() - last_tick >= interval_s:
                    last_tick = time.monotonic()
                    where = f", replayed to {replay['replayed_to']} (LSN {replay['replay_lsn']})" if replay.get("replay_lsn") else ""
                    tick(f"recovering: {self.restored_segments()} WAL segment(s) restored{where}, {elapsed:.0f} s elapsed")
                time.sleep(POLL_S if conn is not None and not conn.closed else CONNECT_RETRY_S)
        finally:
            if conn is not None:
                conn.close()

    def promotion_seconds(self, wait_s: float = 5.0) -> Optional[float]:
        """``promotion_seconds`` of the server log, once the postmaster has logged that it accepts connections
        (a moment after recovery has ended: waited for up to ``wait_s``); None when the log does not say."""
        deadline = time.monotonic() + wait_s
        while True:
            seconds = promotion_seconds(self.log_text())
            if seconds is not None or time.monotonic() >= deadline:
                return seconds
            time.sleep(POLL_S)

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(self._as_user() + [f"{self.server_bin_dir}/pg_ctl", "-D", str(self.data_dir), "-m", "immediate",
                                              "-w", "-t", "60", "stop"], capture_output=True)

    def remove(self) -> None:
        """Stops the instance and deletes its directory (the whole ``base_dir``)."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def log_events(log_text: str) -> list[tuple[float, str]]:
    """(seconds since the epoch, message) of each LOG line of a recovered instance's log, in order
    (INSTANCE_LOG_SETTINGS: every line stamped in UTC)."""
    events = []
    for line in log_text.splitlines():
        found = TIMESTAMPED_LINE.match(line)
        if found:
            at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
            events.append((at.timestamp(), found.group(2)))
    return events


def first_event(events: list[tuple[float, str]], prefix: str, after: float = 0.0) -> Optional[float]:
    """When the first message starting with ``prefix`` was logged, at or after ``after`` (None: never)."""
    return next((at for at, message in events if at >= after and message.startswith(prefix)), None)


def promotion_seconds(log_text: str) -> Optional[float]:
    """Seconds from the end of replay (the target reached: "recovery stopping ...", else "redo done") to the
    server accepting connections, from the log's timestamps; None when the log does not say."""
    events = log_events(log_text)
    ended = first_event(events, "recovery stopping") or first_event(events, "redo done")
    ready = first_event(events, "database system is ready to accept connections", ended) if ended else None
    return ready - ended if ready else None


def recovered_time_from_log(log_text: str) -> Optional[datetime]:
    """What recovery stopped at, from the server log: the restore point's time, else the last transaction it
    applied (None when neither is logged)."""
    for pattern in (RESTORE_POINT_LINE, LAST_COMMIT_LINE):
        found = pattern.findall(log_text)
        if found:
            stamp = found[-1]
            return datetime.strptime(stamp + ("00" if re.search(r"[+-][0-9]{2}$", stamp) else ""), "%Y-%m-%d %H:%M:%S.%f%z")
    return None

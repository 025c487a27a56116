"""A throwaway PostgreSQL cluster (initdb into a temporary directory), usable as root.

initdb and the server refuse to run as root, so when we are root they run as the ``postgres`` OS user
through ``runuser``; the data, socket and log directories are created for that user. The superuser gets
a password and TCP connections require it (scram-sha-256), like a real deployment.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import psycopg

from loyalty_ops.lib.pg.connection import ConnectionSpec

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def find_server_bin_dir() -> str:
    for candidate in PG_BIN_CANDIDATES:
        if (Path(candidate) / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return str(Path(found).parent)
    raise RuntimeError("PostgreSQL server binaries not found; install them with: apt-get install -y postgresql-15")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalPostgres:
    """A running throwaway cluster. Use as a context manager or call ``start()``/``stop()``."""

    password: str = "local-dev-password"
    port: int = 0
    settings: Sequence[str] = ()
    base_dir: Optional[Path] = None
    bin_dir: str = field(default_factory=find_server_bin_dir)
    user: str = "postgres"
    # Variables the server process gets besides ours (e.g. the AWS settings its archive_command needs):
    # given through the environment, never on a command line or in postgresql.conf.
    environment: Mapping[str, str] = field(default_factory=dict)
    _owned_dir: bool = False

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "postgres.log"

    def _as_os_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["runuser", "-u", "postgres", "--"]

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self._as_os_user() + args, check=True, capture_output=True, text=True, **kwargs)

    def start(self) -> "LocalPostgres":
        if os.geteuid() == 0:
            _ensure_postgres_user()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="loyalty-pg-"))
            self._owned_dir = True
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(self.base_dir, 0o755)
        self.port = self.port or free_port()
        if not (self.data_dir / "PG_VERSION").exists():
            pwfile = self.base_dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            if os.geteuid() == 0:
                entry = pwd.getpwnam("postgres")
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            os.chmod(pwfile, 0o600)
            try:
                self._run(
                    [
                        f"{self.bin_dir}/initdb", "-D", str(self.data_dir), "-U", self.user,
                        "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
                        "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
                    ]
                )
            finally:
                pwfile.unlink(missing_ok=True)
        options = [
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            *[f"-c {s}" for s in self.settings],
        ]
        self._run(
            [f"{self.bin_dir}/pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
             "-o", " ".join(options), "-w", "-t", "60", "start"],
            env={**os.environ, **self.environment} if self.environment else None,
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.base_dir is None or not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(
            self._as_os_user() + [f"{self.bin_dir}/pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
            capture_output=True,
        )

    def destroy(self) -> None:
        self.stop("immediate")
        if self._owned_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()

    def spec(self, dbname: str = "postgres") -> ConnectionSpec:
        return ConnectionSpec(host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=dbname)

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(**self.spec(dbname).psycopg_kwargs(), autocommit=autocommit)  # type: ignore[arg-type]

    def create_database(self, name: str, *, drop_existing: bool = False) -> None:
        from psycopg import sql

        with self.connect() as conn:
            if drop_existing:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def env(self, dbname: str = "loyalty") -> dict[str, str]:
        """libpq variables pointing at this cluster."""
        return self.spec(dbname).libpq_env()


def _ensure_postgres_user() -> None:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"], check=True)


REPO_ROOT = Path(__file__).resolve().parents[1]


def server_engine_dir() -> str:
    """barman-cloud-* as the ``postgres`` OS user can run them: the engine venv ``scripts/bootstrap`` makes
    (``/opt/loyalty-ops/pitr-engine`` as root, else ``.venv/pitr-engine``), else this Python's own console scripts."""
    for engine in (Path("/opt/loyalty-ops/pitr-engine/bin"), REPO_ROOT / ".venv" / "pitr-engine" / "bin"):
        if (engine / "barman-cloud-wal-archive").exists():
            return str(engine)
    import sys

    return str(Path(sys.executable).parent)


def archiving_settings(archive_command: str, archive_timeout_s: int = 60, wal_compression: Optional[str] = None) -> tuple[str, ...]:
    """Server settings (``-c``) for continuous archiving with ``archive_command`` (and the server's
    ``wal_compression``, as the generated settings have it: ``ArchiveOptions.server_wal_compression``)."""
    quoted = archive_command.replace("'", "''")
    return ("wal_level=replica", "archive_mode=on", f"archive_command='{quoted}'", f"archive_timeout={int(archive_timeout_s)}",
            "full_page_writes=on", *((f"wal_compression={wal_compression}",) if wal_compression else ()))

"""A Docker-compatible engine for tests and benchmarks: podman's Docker API service, plus a small
PostgreSQL 15 image built locally (no registry is reachable on these machines).

What it does, and why each choice:

* ``podman system service`` with the vfs storage driver and runc (crun fails here on setrlimit/cgroups),
  listening on a Unix socket in a private run directory; the ``docker`` SDK talks to it like to dockerd.
* Its storage lives in a persistent cache directory (``LOYALTY_OPS_CACHE``, default /var/cache/loyalty_ops),
  outside the repository, so the image built by the first session is reused by every later one. An
  exclusive ``flock`` on that directory is held while the engine runs: two sessions never share the
  storage at once (the second waits).
* The image is a root filesystem ``podman import``-ed, from one of two sources (``LOYALTY_OPS_IMAGE_SOURCE``):
  ``host`` (the default when the host has PostgreSQL 15, as scripts/bootstrap installs it): the host's
  PostgreSQL 15 binaries, data files and exactly the shared libraries they load (``ldd``), plus a shell
  and a few tools, about 90 MB, built in seconds; or ``debootstrap``: ``debootstrap --variant=minbase
  --include=postgresql-15 bookworm``, trimmed (apt caches, docs, translations, LLVM), about 300 MB and a
  minute or more (measured 45 s on a quiet machine, over 2 minutes under CI load). Either way JIT is off
  and the tarball is cached too, keyed by source and recipe version.
* Containers run with ``ulimits`` nofile/nproc 1024 and ``network_mode='host'`` (the bridge network would
  edit iptables), as the machine notes found necessary.
* Each exec over the API leaves ``conmon`` processes behind. ``stop()`` removes the containers it started,
  ends the service's process group and then every conmon/cleanup process that names this engine's
  storage, by pid.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

DEFAULT_CACHE_DIR = Path(os.environ.get("LOYALTY_OPS_CACHE", "/var/cache/loyalty_ops"))
RUNC = "/usr/sbin/runc"
IMAGE_REPO = "localhost/loyalty-ops/postgres"
# Bump when the recipe below changes: the cache key of the tarball and the image tag.
IMAGE_RECIPE_VERSION = "2"
IMAGE_SOURCES = ("host", "debootstrap")
# Host binaries and tools copied into the "host" image, with their shared libraries.
HOST_PG_TOOLS = ("postgres", "initdb", "pg_ctl", "pg_dump", "pg_restore", "pg_dumpall", "psql", "pg_isready")
HOST_UTILITIES = ("dash", "tr", "grep", "sleep", "cat", "rm", "ls", "env", "id", "mkdir", "true")
HOST_DATA_DIRS = ("/usr/share/postgresql/15", "/usr/share/zoneinfo", "/usr/lib/locale/C.utf8")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("LOYALTY_OPS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
ENGINE_LABEL = "loyalty_ops.devstack"
PG_BIN = "/usr/lib/postgresql/15/bin"

# Runs as the container's command: a fresh cluster in /tmp, password from the environment (like the
# official image's POSTGRES_PASSWORD), TCP on 127.0.0.1:$PGPORT, local socket in /var/run/postgresql.
ENTRYPOINT_SCRIPT = """#!/bin/sh
set -eu
DATA=${PGDATA:-/tmp/pgdata}
PORT=${PGPORT:-5432}
if [ ! -s "$DATA/PG_VERSION" ]; then
  umask 077
  printf '%s\\n' "${POSTGRES_PASSWORD:-postgres}" > /tmp/.pwfile
  initdb -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile=/tmp/.pwfile \\
    --encoding=UTF8 --locale=C.UTF-8 --no-sync >/tmp/initdb.log 2>&1 || { cat /tmp/initdb.log >&2; exit 1; }
  rm -f /tmp/.pwfile
fi
exec postgres -D "$DATA" -p "$PORT" -k /var/run/postgresql -c listen_addresses="${LISTEN_ADDRESSES:-127.0.0.1}" \\
  -c jit=off -c fsync=off -c synchronous_commit=off -c full_page_writes=off "$@"
"""

TRIM_PATHS = (
    "var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
    "var/lib/postgresql/15/main", "etc/postgresql/15/main", "var/log/postgresql",
)


class EngineUnavailable(RuntimeError):
    """The engine cannot run on this machine (missing podman/runc, or the service does not come up)."""


def default_log(message: str) -> None:
    print(f"[podman-engine] {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PodmanEngine:
    """Starts podman's Docker API service on a private socket. Use as a context manager."""

    cache_dir: Path = DEFAULT_CACHE_DIR
    log: Callable[[str], None] = default_log
    lock_timeout_s: float = 600.0
    _service: Optional[subprocess.Popen] = field(default=None, init=False, repr=False)
    _lock_fd: Optional[int] = field(default=None, init=False, repr=False)
    _run_dir: Optional[Path] = field(default=None, init=False, repr=False)
    _containers: list[str] = field(default_factory=list, init=False, repr=False)

    # -- paths -------------------------------------------------------------------------------------
    @property
    def storage_root(self) -> Path:
        return self.cache_dir / "podman-storage"

    @property
    def run_root(self) -> Path:
        assert self._run_dir is not None, "engine not started"
        return self._run_dir

    @property
    def socket_path(self) -> Path:
        return self.run_root / "podman.sock"

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    def _podman(self) -> list[str]:
        return [
            "podman", "--storage-driver", "vfs", "--runtime", RUNC, "--root", str(self.storage_root),
            "--runroot", str(self.run_root / "runroot"), "--tmpdir", str(self.run_root / "tmp"),
            "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        ]

    # -- lifecycle ---------------------------------------------------------------------------------
    @staticmethod
    def missing_requirements() -> list[str]:
        missing = [name for name in ("podman", "conmon") if not shutil.which(name)]
        if not Path(RUNC).exists():
            missing.append(RUNC)
        return missing

    def start(self, timeout_s: float = 30.0) -> "PodmanEngine":
        missing = self.missing_requirements()
        if missing:
            raise EngineUnavailable(
                f"missing {', '.join(missing)}: install with apt-get install -y podman runc debootstrap "
                "(scripts/bootstrap --test does it)"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        # A fixed run directory per cache dir: the lock makes it ours, and podman's state from a killed
        # earlier session is found (and reset) there instead of in a directory that no longer exists.
        self._run_dir = Path(tempfile.gettempdir()) / f"loyalty-ops-podman-{hashlib.sha1(str(self.cache_dir).encode()).hexdigest()[:10]}"
        self._run_dir.mkdir(mode=0o700, exist_ok=True)
        (self._run_dir / "tmp").mkdir(exist_ok=True)
        self._kill_leftover_processes()
        self.socket_path.unlink(missing_ok=True)
        log_file = open(self.run_root / "service.log", "wb")
        self._service = subprocess.Popen(
            [*self._podman(), "system", "service", "--time=0", self.base_url],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._service.poll() is not None:
                break
            if self.socket_path.exists():
                try:
                    if self.client(timeout=5).ping():
                        self._remove_leftover_containers()
                        return self
                except Exception:
                    pass
            time.sleep(0.1)
        detail = self.service_log_tail()
        self.stop()
        raise EngineUnavailable(f"podman system service did not answer within {timeout_s:.0f} s: {detail}")

    def service_log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.run_root / "service.log").read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no service log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty service log)"

    def _acquire_lock(self) -> None:
        fd = os.open(self.cache_dir / "engine.lock", os.O_RDWR | os.O_CREAT, 0o600)
        started = time.monotonic()
        deadline = started + self.lock_timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                if waiting:
                    self.log(f"got {self.cache_dir}/engine.lock after {time.monotonic() - started:.1f} s")
                return
            except BlockingIOError:
                if not waiting:
                    waiting = True
                    self.log(f"another session uses the engine ({self.cache_dir}/engine.lock); waiting")
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise EngineUnavailable(f"another session holds {self.cache_dir}/engine.lock for too long")
                time.sleep(0.5)

    def client(self, timeout: int = 120):
        import docker

        return docker.DockerClient(base_url=self.base_url, timeout=timeout)

    def stop(self) -> None:
        """Remove our containers, end the service's process group, then the conmons it left."""
        if self._service is not None and self._service.poll() is None and self._containers:
            try:
                client = self.client(timeout=30)
                for name in list(self._containers):
                    try:
                        container = client.containers.get(name)
                        if container.status == "running":
                            container.kill()  # throwaway: no 10 s graceful stop
                        container.remove(force=True, v=True)
                    except Exception:
                        pass
                client.close()
            except Exception:
                pass
        self._containers.clear()
        if self._service is not None:
            try:
                os.killpg(self._service.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._service.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self._service.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._service.wait(5)
            self._service = None
        if self._run_dir is not None:
            self._kill_leftover_processes()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "PodmanEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _our_processes(self) -> list[int]:
        """conmon, `podman ... cleanup` and container processes started for this engine's storage."""
        marker = str(self.storage_root).encode()
        run_marker = str(self.run_root).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if (marker in cmdline or run_marker in cmdline) and (
                cmdline.startswith(b"/usr/bin/conmon") or cmdline.startswith(b"conmon") or b"podman" in cmdline.split(b"\0")[0]
            ):
                found.append(int(entry.name))
        return found

    def _kill_leftover_processes(self) -> None:
        pids = self._our_processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
                time.sleep(0.05)
            if not pids:
                return

    def _remove_leftover_containers(self) -> None:
        client = self.client(timeout=60)
        try:
            for container in client.containers.list(all=True, filters={"label": ENGINE_LABEL}):
                self.log(f"removing container {container.name} left by an earlier session")
                container.remove(force=True, v=True)
        finally:
            client.close()

    # -- the image ---------------------------------------------------------------------------------
    @property
    def image_source(self) -> str:
        source = os.environ.get("LOYALTY_OPS_IMAGE_SOURCE") or (
            "host" if Path(PG_BIN, "postgres").exists() else "debootstrap"
        )
        if source not in IMAGE_SOURCES:
            raise EngineUnavailable(f"LOYALTY_OPS_IMAGE_SOURCE must be one of {', '.join(IMAGE_SOURCES)}, got {source!r}")
        return source

    @property
    def image_tag(self) -> str:
        return f"{IMAGE_REPO}:15-{self.image_source}-r{IMAGE_RECIPE_VERSION}"

    @property
    def rootfs_tarball(self) -> Path:
        return self.cache_dir / f"postgres15-{self.image_source}-rootfs-r{IMAGE_RECIPE_VERSION}.tar"

    def ensure_image(self) -> str:
        """The PostgreSQL 15 image's tag, building and importing it only when it is not cached yet."""
        client = self.client()
        try:
            try:
                client.images.get(self.image_tag)
                return self.image_tag
            except Exception:
                pass
        finally:
            client.close()
        if not self.rootfs_tarball.exists():
            if self.image_source == "host":
                self._build_rootfs_from_host()
            else:
                self._build_rootfs_tarball()
        started = time.monotonic()
        changes = [
            f"ENV PATH={PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            "USER postgres",
            'CMD ["/usr/local/bin/loyalty-db-entrypoint"]',
        ]
        args = [*self._podman(), "import"]
        for change in changes:
            args += ["--change", change]
        result = subprocess.run([*args, str(self.rootfs_tarball), self.image_tag], capture_output=True, text=True)
        if result.returncode != 0:
            raise EngineUnavailable(f"podman import failed: {result.stderr.strip()[-2000:]}")
        self.log(f"imported {self.image_tag} in {time.monotonic() - started:.1f} s")
        return self.image_tag

    def _build_rootfs_from_host(self) -> None:
        """A minimal root filesystem from the host's PostgreSQL 15 install: the binaries, their data
        files, exactly the shared libraries they load, a shell and a few tools. Seconds, no network."""
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=self.cache_dir))
        try:
            rootfs = work / "rootfs"
            for top in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "tmp", "var/run/postgresql",
                        "var/lib/postgresql", "usr/local/bin", "proc", "sys", "dev", "root"):
                (rootfs / top).mkdir(parents=True, exist_ok=True)
            for link in ("bin", "sbin", "lib", "lib64"):  # merged /usr, as on the host
                (rootfs / link).symlink_to(f"usr/{link}")
            (rootfs / "tmp").chmod(0o1777)
            elf_files = [Path(PG_BIN) / tool for tool in HOST_PG_TOOLS]
            for name in HOST_UTILITIES:
                found = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
                if not found:
                    raise EngineUnavailable(f"{name} not found on this host; it is needed in the test image")
                elf_files.append(Path(found))
            modules = [p for p in Path("/usr/lib/postgresql/15/lib").glob("*.so") if not p.name.startswith("llvmjit")]
            copied: set[str] = set()
            for path in elf_files:
                libs = _shared_libraries(path)
                if libs is None:
                    raise EngineUnavailable(f"a library of {path} is missing on this host (ldd {path})")
                for item in [str(path), *libs]:
                    _copy_into(rootfs, item, copied)
            for module in modules:  # extensions and encodings: only those whose libraries all exist
                libs = _shared_libraries(module)
                if libs is not None:
                    for item in [str(module), *libs]:
                        _copy_into(rootfs, item, copied)
            for data_dir in HOST_DATA_DIRS:
                if Path(data_dir).exists():
                    shutil.copytree(data_dir, rootfs / data_dir.lstrip("/"), symlinks=True, dirs_exist_ok=True)
            (rootfs / "usr/bin/sh").symlink_to("dash")
            for tool in HOST_PG_TOOLS:  # on PATH like Debian's wrappers
                (rootfs / "usr/bin" / tool).symlink_to(f"{PG_BIN}/{tool}")
            try:
                import pwd

                entry = pwd.getpwnam("postgres")
                uid, gid = entry.pw_uid, entry.pw_gid
            except KeyError:
                uid, gid = 999, 999
            (rootfs / "etc/passwd").write_text(
                f"root:x:0:0:root:/root:/bin/sh\npostgres:x:{uid}:{gid}:PostgreSQL:/var/lib/postgresql:/bin/sh\n"
            )
            (rootfs / "etc/group").write_text(f"root:x:0:\npostgres:x:{gid}:\n")
            for path in ("var/run/postgresql", "var/lib/postgresql"):
                os.chown(rootfs / path, uid, gid)
            self._finish_rootfs(rootfs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.log(f"root filesystem tarball {self.rootfs_tarball} built from the host in {time.monotonic() - started:.1f} s")

    def _finish_rootfs(self, rootfs: Path) -> None:
        entry = rootfs / "usr/local/bin/loyalty-db-entrypoint"
        entry.write_text(ENTRYPOINT_SCRIPT)
        entry.chmod(0o755)
        partial = self.rootfs_tarball.with_suffix(f".partial-{os.getpid()}")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
        os.replace(partial, self.rootfs_tarball)

    def _build_rootfs_tarball(self) -> None:
        if not shutil.which("debootstrap"):
            raise EngineUnavailable("debootstrap is missing: apt-get install -y debootstrap")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=self.cache_dir))
        try:
            rootfs = work / "rootfs"
            self.log(f"building the PostgreSQL 15 root filesystem with debootstrap ({DEBIAN_MIRROR}); about 45 s, once")
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=postgresql-15", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise EngineUnavailable(f"debootstrap failed: {(result.stdout + result.stderr).strip()[-2000:]}")
            for rel in TRIM_PATHS:
                shutil.rmtree(rootfs / rel, ignore_errors=True)
            for llvm in (rootfs / "usr/lib/x86_64-linux-gnu").glob("libLLVM*"):
                llvm.unlink()  # only the JIT needs it, and the entrypoint turns the JIT off
            run_dir = rootfs / "var/run/postgresql"
            run_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(["chroot", str(rootfs), "chown", "postgres:postgres", "/var/run/postgresql"], check=True)
            self._finish_rootfs(rootfs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.log(f"root filesystem tarball {self.rootfs_tarball} built in {time.monotonic() - started:.1f} s")

    # -- containers --------------------------------------------------------------------------------
    def run_postgres(
        self,
        name: Optional[str] = None,
        *,
        password: str = "postgres",
        port: Optional[int] = None,
        labels: Optional[dict[str, str]] = None,
        wait_s: float = 30.0,
    ):
        """Start a PostgreSQL 15 container on the host network and wait until it accepts connections.
        Returns ``(container, port)``."""
        image = self.ensure_image()
        name = name or f"loyalty-db-prod-{uuid.uuid4().hex[:8]}"
        port = port or _free_port()
        client = self.client()
        container = client.containers.run(
            image,
            name=name,
            detach=True,
            network_mode="host",
            environment={"POSTGRES_PASSWORD": password, "PGPORT": str(port)},
            ulimits=[
                {"Name": "nofile", "Soft": 1024, "Hard": 1024},
                {"Name": "nproc", "Soft": 1024, "Hard": 1024},
            ],
            labels={ENGINE_LABEL: "1", **(labels or {})},
        )
        self._containers.append(name)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            container.reload()
            if container.status not in ("created", "running"):
                logs = container.logs(tail=30).decode(errors="replace")
                raise EngineUnavailable(f"container {name} exited ({container.status}): {logs}")
            code, _ = container.exec_run(["pg_isready", "-h", "127.0.0.1", "-p", str(port), "-q"])
            if code == 0:
                return container, port
            time.sleep(0.2)
        raise EngineUnavailable(f"PostgreSQL in {name} did not accept connections within {wait_s:.0f} s")

    def forget(self, name: str) -> None:
        """A container the caller removed itself."""
        if name in self._containers:
            self._containers.remove(name)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _shared_libraries(path: Path) -> Optional[list[str]]:
    """The shared libraries ``path`` loads (absolute paths, loader included); None if one is missing."""
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        return [] if "not a dynamic executable" in (result.stdout + result.stderr) else None
    libs = []
    for line in result.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            return None
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0]
            if target.startswith("/"):
                libs.append(target)
        elif line.startswith("/"):
            libs.append(line.split(" (", 1)[0])
    return libs


def _copy_into(rootfs: Path, host_path: str, copied: set[str]) -> None:
    """Copy a host file (following symlinks) to the same path in ``rootfs``, with merged /usr."""
    if host_path in copied:
        return
    copied.add(host_path)
    rel = host_path.lstrip("/")
    for merged in ("bin/", "sbin/", "lib/", "lib64/"):
        if rel.startswith(merged):
            rel = "usr/" + rel
            break
    dest = rootfs / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(host_path, dest)

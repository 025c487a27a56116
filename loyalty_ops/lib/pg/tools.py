"""Running PostgreSQL's command-line tools (pg_dump, pg_restore, psql) behind one small interface.

Callers ask a :class:`PgToolRunner` to ``start`` a tool with an argument list and get a
:class:`ToolProcess` back: a readable ``stdout``, a writable ``stdin``, ``wait()`` and the tail of stderr.
:class:`HostToolRunner` runs the host's binaries with ``subprocess``; a runner that executes the tools
inside the database's container (``docker exec``) implements the same interface, so callers never change.

Connection settings travel in the environment (``PGHOST``, ``PGPASSWORD``, ...), never in argv.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Optional, Protocol, Sequence

from loyalty_ops.lib.pg.connection import ConnectionSpec

KNOWN_TOOLS = ("pg_dump", "pg_restore", "psql", "pg_dumpall")
DEFAULT_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
STDERR_TAIL_BYTES = 64 * 1024
# Running a server as the PostgreSQL OS user (scratch instances) from root: by absolute path, because those
# processes get an explicit environment whose PATH may not include sbin.
RUNUSER = shutil.which("runuser", path="/usr/sbin:/usr/bin:/sbin:/bin") or "runuser"


class ToolError(RuntimeError):
    """A PostgreSQL tool failed or could not be started. ``stderr`` holds what the tool said."""

    def __init__(self, message: str, *, tool: str = "", returncode: Optional[int] = None, stderr: str = ""):
        super().__init__(message)
        self.tool = tool
        self.returncode = returncode
        self.stderr = stderr


class ToolProcess(Protocol):
    """A running tool. Read ``stdout`` and/or write ``stdin``, then ``wait()``."""

    stdout: Optional[IO[bytes]]
    stdin: Optional[IO[bytes]]

    def wait(self, timeout: Optional[float] = None) -> int: ...

    def stderr_text(self) -> str: ...

    def kill(self) -> None: ...


class PgToolRunner(Protocol):
    """Starts PostgreSQL tools against one server. Implemented by the host and container runners."""

    description: str

    def start(
        self,
        tool: str,
        args: Sequence[str],
        *,
        database: Optional[str] = None,
        stdin: bool = False,
        stdout: bool = True,
    ) -> ToolProcess: ...

    def tool_version(self, tool: str) -> str: ...


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    stdout: bytes
    stderr: str


def parse_version(text: str) -> tuple[int, int]:
    """``pg_dump (PostgreSQL) 15.18 (Debian ...)`` or ``PostgreSQL 15.4 on ...`` -> (15, 18)."""
    match = re.search(r"(\d+)(?:\.(\d+))?", text.split(")", 1)[-1] if ")" in text else text)
    if not match:
        raise ValueError(f"no version number in {text!r}")
    return int(match.group(1)), int(match.group(2) or 0)


def run_tool(
    runner: PgToolRunner,
    tool: str,
    args: Sequence[str],
    *,
    database: Optional[str] = None,
    input_bytes: Optional[bytes] = None,
    check: bool = True,
) -> ToolResult:
    """Run a tool to completion and collect its output (for small outputs: lists, versions, SQL)."""
    proc = runner.start(tool, args, database=database, stdin=input_bytes is not None, stdout=True)
    out_chunks: list[bytes] = []

    def _drain() -> None:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read(65536), b""):
            out_chunks.append(chunk)

    reader = threading.Thread(target=_drain, daemon=True)
    reader.start()
    if input_bytes is not None and proc.stdin is not None:
        try:
            proc.stdin.write(input_bytes)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
    reader.join()
    code = proc.wait()
    result = ToolResult(code, b"".join(out_chunks), proc.stderr_text())
    if check and code != 0:
        raise ToolError(
            f"{tool} exited with code {code} ({runner.description}): {result.stderr.strip()[-2000:] or 'no stderr'}",
            tool=tool,
            returncode=code,
            stderr=result.stderr,
        )
    return result


class _StderrTail:
    """Collects the last bytes a process writes to stderr, on a thread so the pipe never fills."""

    def __init__(self, stream: IO[bytes]):
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for chunk in iter(lambda: stream.read(8192), b""):
            with self._lock:
                self._buf += chunk
                if len(self._buf) > STDERR_TAIL_BYTES:
                    del self._buf[: len(self._buf) - STDERR_TAIL_BYTES]
        stream.close()

    def text(self, wait: float = 5.0) -> str:
        self._thread.join(wait)
        with self._lock:
            return self._buf.decode("utf-8", errors="replace")


class HostProcess:
    """A tool running as a local subprocess."""

    def __init__(self, popen: subprocess.Popen):
        self._popen = popen
        self.stdout = popen.stdout
        self.stdin = popen.stdin
        self._stderr = _StderrTail(popen.stderr)  # type: ignore[arg-type]

    @property
    def pid(self) -> int:
        return self._popen.pid

    def wait(self, timeout: Optional[float] = None) -> int:
        return self._popen.wait(timeout)

    def stderr_text(self) -> str:
        return self._stderr.text()

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait()


def find_bin_dir(preferred: Optional[str] = None) -> Optional[str]:
    """The directory holding pg_dump: the configured one, the newest Debian install, or PATH."""
    candidates = [preferred] if preferred else list(DEFAULT_BIN_DIRS)
    for candidate in candidates:
        if candidate and (Path(candidate) / "pg_dump").exists():
            return candidate
    if preferred:
        raise ToolError(f"pg_bin_dir {preferred!r} has no pg_dump; set LOYALTY_PG_BIN_DIR to the directory holding it")
    found = shutil.which("pg_dump")
    return str(Path(found).parent) if found else None


class HostToolRunner:
    """Runs the host's PostgreSQL binaries with the connection in the environment."""

    def __init__(self, spec: ConnectionSpec, bin_dir: Optional[str] = None, base_env: Optional[Mapping[str, str]] = None):
        """``base_env``: what else the tools' processes get (PATH, HOME, locale: the settings'
        ``tool_base_environment()``); none: only the connection's libpq settings."""
        self.spec = spec
        self.bin_dir = find_bin_dir(bin_dir)
        self.base_env = {k: v for k, v in (base_env or {}).items() if not k.startswith("PG")}
        self.description = f"host tools in {self.bin_dir or 'PATH'}"

    def _executable(self, tool: str) -> str:
        if tool not in KNOWN_TOOLS:
            raise ToolError(f"unknown PostgreSQL tool {tool!r}; expected one of {', '.join(KNOWN_TOOLS)}", tool=tool)
        path = Path(self.bin_dir) / tool if self.bin_dir else shutil.which(tool)
        if not path or not Path(path).exists():
            raise ToolError(
                f"{tool} not found on this machine; install the PostgreSQL client (apt-get install postgresql-client) "
                "or set LOYALTY_PG_BIN_DIR",
                tool=tool,
            )
        return str(path)

    def _env(self, database: Optional[str]) -> dict[str, str]:
        # The base without any libpq settings of its own (they would override the spec's), then ours.
        env = dict(self.base_env)
        env.update(self.spec.libpq_env())
        if database:
            env["PGDATABASE"] = database
        return env

    def start(self, tool, args, *, database=None, stdin=False, stdout=True) -> HostProcess:
        popen = subprocess.Popen(
            [self._executable(tool), *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._env(database),
            bufsize=0,
        )
        return HostProcess(popen)

    def tool_version(self, tool: str) -> str:
        result = subprocess.run([self._executable(tool), "--version"], capture_output=True, text=True, check=True)
        return result.stdout.strip()

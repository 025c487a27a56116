"""Runs pg_dump, pg_restore and psql inside the database's container through the Docker API: the guide's
``docker exec loyalty-db-prod pg_dump ...``, without a docker CLI and without PostgreSQL tools on the host.

How one tool runs:

* ``exec_create`` in the named container with ``/bin/sh -c`` and a fixed script (no values in it): the
  script reads the password from the first line of standard input, exports it as ``PGPASSWORD`` and
  ``exec``s the tool with the caller's arguments. Non-secret libpq settings (``PGHOST``, ``PGPORT``,
  ``PGUSER``, ``PGDATABASE``, ...) go in the exec's environment. So the password is never in argv, never in
  the exec's stored configuration (which ``docker inspect``/the engine's state keeps), only in the tool
  process's own environment inside the container, exactly as with the host runner.
* ``exec_start`` with the connection hijacked (``socket=True``): stdout and stderr arrive multiplexed in
  frames (8-byte header: stream id, 3 zero bytes, big-endian length). :class:`ExecStream` demultiplexes
  them as the caller reads: stdout bytes are handed out in the caller's chunk sizes, stderr frames go to a
  bounded tail buffer. Nothing is buffered beyond one read, so a dump is never held in memory.
* Standard input is written to the same socket; closing ``stdin`` half-closes the socket's write side so
  the tool sees end of file (restore streams its archive this way).
* ``wait()`` drains what is left and reads the exit code from ``exec_inspect``.

Inside the container the tool usually talks to the container's own server. By default the runner uses
the connection settings as given (right when the server listens on the same address inside and out,
e.g. host networking, or ``PGHOST=localhost`` and the published port equals the container port). For the
guide's compose deployment, where the host reaches the database on a published port but inside the
container it is ``localhost:5432``, set ``exec_host``/``exec_port`` (or ``LOYALTY_DB_CONTAINER_PGHOST`` /
``LOYALTY_DB_CONTAINER_PGPORT``); ``exec_host="local"`` unsets ``PGHOST`` so the tool uses the container's
Unix socket.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import uuid
from typing import Any, Optional, Sequence

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.tools import KNOWN_TOOLS, STDERR_TAIL_BYTES, ToolError

FRAME_HEADER = struct.Struct(">BxxxL")
STDOUT, STDERR = 1, 2
LOCAL_SOCKET = "local"
EXEC_MARKER_ENV = "LOYALTY_OPS_EXEC"  # a random token per exec, so kill() can find the tool's processes

# Signals every process in the container whose environment carries the exec's token: the tool and its
# children (the engine has no API to signal an exec). $1 = signal, $2 = token.
_KILL_SCRIPT = (
    'for d in /proc/[0-9]*; do '
    'if tr "\\000" "\\n" < "$d/environ" 2>/dev/null | grep -qx "' + EXEC_MARKER_ENV + '=$2"; then '
    'kill "-$1" "${d#/proc/}" 2>/dev/null; fi; done; true'
)
EXIT_CODE_WAIT_S = 30.0

# $1 is the tool; the rest are its arguments. The password line is read byte by byte by `read`, so
# whatever follows it on stdin (a restore's archive) reaches the tool untouched.
_WRAPPER = (
    'IFS= read -r PGPASSWORD || true; '
    'if [ -n "$PGPASSWORD" ]; then export PGPASSWORD; else unset PGPASSWORD; fi; '
    'exec "$@"'
)


# pg_restore options whose value is the next argument (so that argument is not the archive).
_PG_RESTORE_VALUE_OPTIONS = {
    "-d", "--dbname", "-f", "--file", "-F", "--format", "-I", "--index", "-j", "--jobs", "-L", "--use-list",
    "-n", "--schema", "-N", "--exclude-schema", "-P", "--function", "-S", "--superuser", "-t", "--table",
    "-T", "--trigger", "-h", "--host", "-p", "--port", "-U", "--username", "--role",
}


def host_archive_argument(args: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """``pg_restore [options] FILE`` where FILE is on this host: the container cannot open it, so it is
    streamed to pg_restore's stdin instead. ``--jobs`` is dropped: pg_restore -j refuses standard input.
    Returns (host file or None, arguments to run)."""
    args = list(args)
    if not args:
        return None, args
    candidate = args[-1]
    if candidate.startswith("-") or (len(args) > 1 and args[-2] in _PG_RESTORE_VALUE_OPTIONS):
        return None, args
    if not os.path.isfile(candidate):
        return None, args
    kept: list[str] = []
    skip_next = False
    for arg in args[:-1]:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-j", "--jobs"):
            skip_next = True
            continue
        if arg.startswith("--jobs=") or (arg.startswith("-j") and arg[2:].isdigit()):
            continue
        kept.append(arg)
    return candidate, kept


def _feed_file(path: str, sink: "_ExecStdin") -> threading.Thread:
    def _run() -> None:
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1024 * 1024), b""):
                    sink.write(block)
        except OSError:
            pass  # the tool stopped reading or was killed; its exit code says why
        finally:
            sink.close()

    thread = threading.Thread(target=_run, name="exec-stdin-feeder", daemon=True)
    thread.start()
    return thread


class ContainerError(ToolError):
    """The container or the engine is not usable (not found, not running, engine unreachable)."""


def _engine_error(exc: BaseException, docker_host: Optional[str]) -> ContainerError:
    where = docker_host or os.environ.get("DOCKER_HOST") or "the default socket /var/run/docker.sock"
    return ContainerError(
        f"cannot reach the Docker engine at {where}: {exc}. Check that the engine runs and DOCKER_HOST points at it."
    )


class _ExecStdin:
    """Writable end of the exec's stdin. ``close()`` half-closes the connection (EOF for the tool)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self.closed = False

    def write(self, data: bytes) -> int:
        if self.closed:
            raise ValueError("write to closed stdin")
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise BrokenPipeError(f"the tool in the container stopped reading its input: {exc}") from None
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def __enter__(self) -> "_ExecStdin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ExecStdout:
    """Readable stdout of the exec: ``read(n)`` returns up to n bytes (b'' at end of stream)."""

    def __init__(self, stream: "ExecStream"):
        self._stream = stream
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        return self._stream.read_stdout(n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class ExecStream:
    """One running exec: the demultiplexer over the hijacked connection, plus stdin/stdout handles."""

    def __init__(
        self, api: Any, exec_id: str, response: Any, *, tool: str, container: str, want_stdin: bool, token: str = ""
    ):
        self._api = api
        self.exec_id = exec_id
        self._token = token
        self.tool = tool
        self.container = container
        self._response = response  # keeps the connection open
        fp = response.raw._fp.fp  # the buffered reader http.client used for the headers
        self._reader = fp  # read through it: it may already hold the first frames
        self._sock: socket.socket = getattr(fp.raw, "_sock", None) or fp.raw
        # The client's request timeout must not apply to the stream: a restore may print nothing for hours.
        self._sock.settimeout(None)
        self._read_lock = threading.Lock()
        self._frame_left = 0
        self._frame_kind = 0
        self._eof = False
        self._stderr = bytearray()
        self._stderr_lock = threading.Lock()
        self._closed = False
        self._exit_code: Optional[int] = None
        self.stdout = _ExecStdout(self)
        self.stdin = _ExecStdin(self._sock) if want_stdin else None
        self.feeder: Optional[threading.Thread] = None  # streams a host file into stdin (pg_restore FILE)

    # -- reading frames --------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        try:
            return self._reader.read(n)
        except ConnectionResetError:
            # The engine closed the connection while our stdin still had unread bytes (the tool stopped
            # reading early, e.g. pg_restore --list). Queued output was delivered first; the exit code
            # from exec_inspect tells whether the tool succeeded.
            return b""
        except (OSError, ValueError):
            if self._closed:  # kill() closed the connection under a reader
                return b""
            raise

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._read(n - len(buf))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)

    def _next_frame(self) -> bool:
        """Advance to the next frame header; False at end of stream."""
        header = self._read_exact(FRAME_HEADER.size)
        if len(header) < FRAME_HEADER.size:
            self._eof = True
            return False
        kind, length = FRAME_HEADER.unpack(header)
        self._frame_kind, self._frame_left = kind, length
        return True

    def _consume_stderr_frame(self) -> None:
        while self._frame_left:
            chunk = self._read(min(self._frame_left, 65536))
            if not chunk:
                self._eof = True
                self._frame_left = 0
                return
            self._frame_left -= len(chunk)
            with self._stderr_lock:
                self._stderr += chunk
                if len(self._stderr) > STDERR_TAIL_BYTES:
                    del self._stderr[: len(self._stderr) - STDERR_TAIL_BYTES]

    def read_stdout(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes of stdout (all the rest when n < 0); blocks until n bytes or end of stream,
        like a buffered file. stderr frames met on the way are collected."""
        limit = n if n is not None and n >= 0 else None
        out = bytearray()
        with self._read_lock:
            while not self._eof and (limit is None or len(out) < limit):
                if self._frame_left == 0:
                    if not self._next_frame():
                        break
                    continue
                if self._frame_kind != STDOUT:
                    self._consume_stderr_frame()
                    continue
                want = self._frame_left if limit is None else min(self._frame_left, limit - len(out))
                chunk = self._read(want) if want > 0 else b""
                if not chunk:
                    self._eof = True
                    break
                self._frame_left -= len(chunk)
                out += chunk
        return bytes(out)

    def drain(self) -> None:
        """Read to the end of the stream, discarding stdout nobody asked for."""
        while self.read_stdout(1024 * 1024):
            pass

    # -- the ToolProcess interface ---------------------------------------------------------------
    def stderr_text(self) -> str:
        with self._stderr_lock:
            return self._stderr.decode("utf-8", errors="replace")

    def wait(self, timeout: Optional[float] = None) -> int:
        if self._exit_code is not None:
            return self._exit_code
        self.drain()  # like a host process: the caller closes stdin (a feeder may still be writing)
        if self.feeder is not None:
            self.feeder.join()
        self._close_connection()
        deadline = time.monotonic() + (timeout if timeout is not None else EXIT_CODE_WAIT_S)
        while True:
            info = self._api.exec_inspect(self.exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                self._exit_code = int(info["ExitCode"])
                return self._exit_code
            if time.monotonic() > deadline:
                raise ToolError(
                    f"{self.tool} in container {self.container} closed its output but the engine still reports it "
                    "running; no exit code",
                    tool=self.tool,
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """Stop the tool. The engine has no signal API for an exec and closing the connection alone would
        leave the tool running (its output discarded), so a second exec sends SIGTERM, then SIGKILL, to
        the processes carrying this exec's token; then the connection is closed."""
        if self._exit_code is None and self._token:
            for sig, pause in (("TERM", 1.0), ("KILL", 0.0)):
                try:
                    if not self._api.exec_inspect(self.exec_id).get("Running"):
                        break
                    killer = self._api.exec_create(
                        self.container, ["/bin/sh", "-c", _KILL_SCRIPT, "loyalty-ops-kill", sig, self._token],
                        stdout=False, stderr=False,
                    )
                    self._api.exec_start(killer["Id"], detach=True)
                except Exception:
                    break  # container or engine gone: nothing left to signal
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline:
                    time.sleep(0.1)
                    try:
                        if not self._api.exec_inspect(self.exec_id).get("Running"):
                            break
                    except Exception:
                        break
        self._close_connection()

    def _close_connection(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._response.close()
        except Exception:
            pass


class DockerExecToolRunner:
    """Starts PostgreSQL tools with ``exec`` in a running container (the guide's ``docker exec``).

    File paths in a tool's arguments name files *inside the container*. The one host file callers pass,
    ``pg_restore [--jobs=N] FILE``, is streamed through stdin instead (single-process restore: pg_restore
    -j cannot read stdin); callers that care can test ``host_paths_visible``.
    """

    host_paths_visible = False

    def __init__(
        self,
        spec: ConnectionSpec,
        container: str,
        docker_host: Optional[str] = None,
        *,
        exec_host: Optional[str] = None,
        exec_port: Optional[int] = None,
        exec_user: Optional[str] = None,
        client: Any = None,
    ):
        if not container:
            raise ContainerError("no container named: set LOYALTY_DB_CONTAINER, e.g. loyalty-db-prod")
        self.spec = spec
        self.container = container
        self.docker_host = docker_host or os.environ.get("DOCKER_HOST") or None
        self.exec_host = exec_host if exec_host is not None else (os.environ.get("LOYALTY_DB_CONTAINER_PGHOST") or None)
        port_text = os.environ.get("LOYALTY_DB_CONTAINER_PGPORT")
        if exec_port is None and port_text:
            if not port_text.isdigit():
                raise ContainerError(f"LOYALTY_DB_CONTAINER_PGPORT must be a number, got {port_text!r}")
            exec_port = int(port_text)
        self.exec_port = exec_port
        self.exec_user = exec_user if exec_user is not None else (os.environ.get("LOYALTY_DB_CONTAINER_USER") or None)
        self._client = client
        self.description = f"docker exec in container {container}" + (f" via {self.docker_host}" if self.docker_host else "")

    # -- engine and container ----------------------------------------------------------------------
    def client(self):
        if self._client is None:
            import docker

            try:
                if self.docker_host:
                    self._client = docker.DockerClient(base_url=self.docker_host, timeout=60)
                else:
                    self._client = docker.from_env(timeout=60)
            except Exception as exc:  # DockerException when no engine answers
                raise _engine_error(exc, self.docker_host) from None
        return self._client

    def _running_container(self):
        import docker.errors
        import requests

        client = self.client()
        try:
            container = client.containers.get(self.container)
        except docker.errors.NotFound:
            raise ContainerError(
                f"container {self.container!r} not found on {self.docker_host or 'the Docker engine'}: check "
                "LOYALTY_DB_CONTAINER (docker ps --format '{{.Names}}' lists the names)"
            ) from None
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            raise _engine_error(exc, self.docker_host) from None
        if container.status != "running":
            state = container.attrs.get("State", {})
            raise ContainerError(
                f"container {self.container!r} is {container.status} (exit code {state.get('ExitCode')}), not running: "
                f"start it (docker-compose -f docker-compose.prod.yml up -d db) and retry"
            )
        return container

    def exec_password(self) -> Optional[str]:
        """The password sent on stdin: the configured one, else the host's passfile entry for the target."""
        return self.spec.password or self.spec.passfile_password()

    def exec_environment(self, database: Optional[str]) -> dict[str, str]:
        """The exec's environment: libpq settings without the password (that travels on stdin)."""
        env = self.spec.libpq_env()
        env.pop("PGPASSWORD", None)
        env.pop("PGPASSFILE", None)  # read on the host (exec_password); its path means nothing inside the container
        if self.exec_host == LOCAL_SOCKET:
            env.pop("PGHOST", None)
        elif self.exec_host:
            env["PGHOST"] = self.exec_host
        if self.exec_port:
            env["PGPORT"] = str(self.exec_port)
        if database:
            env["PGDATABASE"] = database
        return env

    # -- PgToolRunner --------------------------------------------------------------------------------
    def start(self, tool, args: Sequence[str], *, database=None, stdin=False, stdout=True) -> ExecStream:
        if tool not in KNOWN_TOOLS:
            raise ToolError(f"unknown PostgreSQL tool {tool!r}; expected one of {', '.join(KNOWN_TOOLS)}", tool=tool)
        host_file = None
        if tool == "pg_restore" and not stdin:
            host_file, args = host_archive_argument(args)
        stream = self._start_exec(tool, args, database=database, stdin=stdin or host_file is not None, stdout=stdout)
        if host_file is not None:
            stream.feeder = _feed_file(host_file, stream.stdin)  # type: ignore[arg-type]
            stream.stdin = None
        return stream

    def _start_exec(self, tool, args: Sequence[str], *, database=None, stdin=False, stdout=True) -> ExecStream:
        import docker.errors
        import requests

        container = self._running_container()
        api = self.client().api
        env = self.exec_environment(database)
        token = uuid.uuid4().hex
        env[EXEC_MARKER_ENV] = token
        try:
            created = api.exec_create(
                container.id,
                ["/bin/sh", "-c", _WRAPPER, "loyalty-ops-exec", tool, *args],
                stdout=True,  # always attached: an unattached stdout would leave the tool's writes nowhere
                stderr=True,
                stdin=True,  # the password line, then the caller's input if any
                tty=False,
                environment=env,
                user=self.exec_user or "",
            )
            exec_id = created["Id"]
            response = api._post_json(
                api._url("/exec/{0}/start", exec_id),
                headers={"Connection": "Upgrade", "Upgrade": "tcp"},
                data={"Tty": False, "Detach": False},
                stream=True,
            )
            api._raise_for_status(response)
        except docker.errors.NotFound:
            raise ContainerError(f"container {self.container!r} disappeared while starting {tool}") from None
        except docker.errors.APIError as exc:
            raise ContainerError(f"the engine refused to run {tool} in {self.container!r}: {exc.explanation or exc}") from None
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            raise _engine_error(exc, self.docker_host) from None
        stream = ExecStream(
            api, exec_id, response, tool=tool, container=self.container, want_stdin=stdin, token=token
        )
        password_line = (self.exec_password() or "").replace("\n", "") + "\n"
        try:
            stream._sock.sendall(password_line.encode())
            if not stdin:
                stream._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the tool already exited; wait() reports why
        if not stdout:
            stream.stdout = None  # type: ignore[assignment]
        return stream

    def tool_version(self, tool: str) -> str:
        from loyalty_ops.lib.pg.tools import run_tool

        result = run_tool(self, tool, ["--version"])
        return result.stdout.decode(errors="replace").strip()

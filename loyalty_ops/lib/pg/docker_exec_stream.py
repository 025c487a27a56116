"""The Docker exec stream protocol: one running ``exec`` seen as a process (stdout to read, stdin to write,
stderr kept as a tail, an exit code, a way to stop it). The runner that decides what to exec is
``loyalty_ops.lib.pg.docker_runner``.

* :func:`start_exec_stream` starts a created exec through docker-py's public ``exec_start(socket=True)``: the
  HTTP connection is upgraded (hijacked) and handed over as a socket.
* Reading: stdout and stderr arrive multiplexed in frames (8-byte header: stream id, 3 zero bytes,
  big-endian length). docker-py's own ``frames_iter`` walks them; :class:`ExecStream` hands stdout out in the
  caller's chunk sizes and keeps the stderr frames in a bounded tail. Nothing is buffered beyond one frame,
  so a dump is never held in memory.
* Writing: standard input goes to the same socket; closing ``stdin`` half-closes the socket's write side so
  the tool sees end of file (restore streams its archive this way).
* ``wait()`` drains what is left and reads the exit code from ``exec_inspect``; ``kill()`` signals the tool
  through a second exec (the engine has no signal API for an exec).

docker-py reads frames from the raw socket, past http.client's buffered reader. That loses nothing here
because the command the runner execs prints nothing before it has read its first line of input, and that
line is sent (:meth:`ExecStream.send_first_input`) only after the upgrade response has been read.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Optional

from docker.utils.socket import STDERR, STDOUT, frames_iter

from loyalty_ops.lib.pg.tools import STDERR_TAIL_BYTES, ToolError

EXEC_MARKER_ENV = "LOYALTY_OPS_EXEC"  # a random token per exec, so kill() can find the tool's processes
EXIT_CODE_WAIT_S = 30.0

# Signals every process in the container whose environment carries the exec's token: the tool and its
# children. $1 = signal, $2 = token.
_KILL_SCRIPT = (
    'for d in /proc/[0-9]*; do '
    'if tr "\\000" "\\n" < "$d/environ" 2>/dev/null | grep -qx "' + EXEC_MARKER_ENV + '=$2"; then '
    'kill "-$1" "${d#/proc/}" 2>/dev/null; fi; done; true'
)


def _raw_socket(stream_socket: Any) -> socket.socket:
    """The OS socket under what ``exec_start(socket=True)`` returns (a ``socket.SocketIO`` over HTTP or a Unix
    socket): it is needed to half-close the write side and to lift the client's request timeout."""
    return getattr(stream_socket, "_sock", None) or stream_socket


def _shutdown(sock: socket.socket, how: int) -> None:
    """Half- or fully close the connection; a connection the engine already closed is fine."""
    try:
        sock.shutdown(how)
    except OSError:
        pass


class ExecStdin:
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
        _shutdown(self._sock, socket.SHUT_WR)

    def __enter__(self) -> "ExecStdin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ExecStdout:
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
        self, api: Any, exec_id: str, stream_socket: Any, *, tool: str, container: str, want_stdin: bool,
        token: str = "",
    ):
        self._api = api
        self.exec_id = exec_id
        self._token = token
        self.tool = tool
        self.container = container
        self._stream_socket = stream_socket  # keeps the HTTP response (and so the connection) alive
        self._sock = _raw_socket(stream_socket)
        # The client's request timeout must not apply to the stream: a restore may print nothing for hours.
        self._sock.settimeout(None)
        self._frames = frames_iter(stream_socket, tty=False)
        self._read_lock = threading.Lock()
        self._pending = b""  # the part of the current stdout frame not yet handed out
        self._eof = False
        self._stderr = bytearray()
        self._stderr_lock = threading.Lock()
        self._closed = False
        self._exit_code: Optional[int] = None
        self.stdout: Optional[ExecStdout] = ExecStdout(self)
        self.stdin: Optional[ExecStdin] = ExecStdin(self._sock) if want_stdin else None
        self.feeder: Optional[threading.Thread] = None  # streams a host file into stdin (pg_restore FILE)

    def send_first_input(self, data: bytes, *, more_input: bool) -> None:
        """Write the first bytes of stdin; without ``more_input`` the write side is closed right after."""
        try:
            self._sock.sendall(data)
            if not more_input:
                self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the tool already exited; wait() reports why

    # -- reading frames --------------------------------------------------------------------------
    def _next_frame(self) -> Optional[tuple[int, bytes]]:
        """The next (stream id, bytes) from docker-py's frame walker; None at end of stream."""
        try:
            return next(self._frames, None)
        except ConnectionResetError:
            # The engine closed the connection while our stdin still had unread bytes: the tool exited
            # without reading all its input. Output the engine had not yet copied can be lost then (podman
            # ends the attach on the failed write to the tool's stdin), so a caller that needs the whole
            # output feeds only what the tool reads (integrity.TocListing) and checks what came back. The
            # exit code from exec_inspect still tells whether the tool succeeded.
            return None
        except (OSError, ValueError):
            if self._closed:  # kill() closed the connection under a reader
                return None
            raise

    def _keep_stderr(self, chunk: bytes) -> None:
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
            while limit is None or len(out) < limit:
                if not self._pending:
                    if self._eof:
                        break
                    frame = self._next_frame()
                    if frame is None:
                        self._eof = True
                        break
                    kind, chunk = frame
                    if kind == STDERR:
                        self._keep_stderr(chunk)
                    elif kind == STDOUT:
                        self._pending = chunk
                    continue
                take = len(self._pending) if limit is None else min(len(self._pending), limit - len(out))
                out += self._pending[:take]
                self._pending = self._pending[take:]
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
        _shutdown(self._sock, socket.SHUT_RDWR)
        try:
            self._stream_socket.close()
            response = getattr(self._stream_socket, "_response", None)  # docker-py keeps it there for TLS
            if response is not None:
                response.close()
        except Exception:
            pass


def start_exec_stream(api: Any, exec_id: str, *, tool: str, container: str, want_stdin: bool, token: str) -> ExecStream:
    """Start a created exec (attached, no TTY) and return its stream. Engine errors are docker-py's own."""
    stream_socket = api.exec_start(exec_id, detach=False, tty=False, socket=True)
    return ExecStream(api, exec_id, stream_socket, tool=tool, container=container, want_stdin=want_stdin, token=token)

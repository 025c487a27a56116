"""The exec stream protocol over a real socket pair: the engine's side writes multiplexed frames as Docker does
(8-byte header: stream id, 3 zero bytes, big-endian length); the tool's side is an :class:`ExecStream`."""

from __future__ import annotations

import socket
import struct
import threading

from loyalty_ops.lib.pg.docker_exec_stream import ExecStream
from loyalty_ops.lib.pg.tools import STDERR_TAIL_BYTES


def _frame(stream_id: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream_id, len(data)) + data


class _FinishedExec:
    """The engine's exec_inspect answer for an exec that has exited with ``code``."""

    def __init__(self, code: int):
        self.code = code

    def exec_inspect(self, exec_id: str) -> dict:
        return {"Running": False, "ExitCode": self.code}


def _stream(code: int = 0, *, want_stdin: bool = False) -> tuple[ExecStream, socket.socket]:
    ours, engine = socket.socketpair()
    stream = ExecStream(_FinishedExec(code), "exec-1", ours, tool="pg_dump", container="db", want_stdin=want_stdin)
    return stream, engine


def test_stdout_comes_in_the_callers_chunk_sizes_and_stderr_goes_to_the_tail():
    stream, engine = _stream(code=3)
    engine.sendall(_frame(1, b"abcdefgh") + _frame(2, b"warning: x\n") + _frame(1, b"ij") + _frame(2, b"error: y\n"))
    engine.close()
    assert stream.stdout.read(3) == b"abc"
    assert stream.stdout.read(3) == b"def"
    assert stream.stdout.read(10) == b"ghij"  # the rest, across a stderr frame, then end of stream
    assert stream.stdout.read(10) == b""
    assert stream.stderr_text() == "warning: x\nerror: y\n"
    assert stream.wait() == 3


def test_stderr_keeps_only_its_tail_and_wait_drains_unread_stdout():
    stream, engine = _stream()
    big = b"e" * (STDERR_TAIL_BYTES + 100) + b"END"
    writer = threading.Thread(target=lambda: (engine.sendall(_frame(1, b"x" * 200_000) + _frame(2, big)), engine.close()))
    writer.start()
    assert stream.wait() == 0
    writer.join()
    tail = stream.stderr_text()
    assert len(tail) == STDERR_TAIL_BYTES and tail.endswith("END")


def test_stdin_reaches_the_engine_and_close_is_end_of_file():
    stream, engine = _stream(want_stdin=True)
    stream.send_first_input(b"secret\n", more_input=True)
    stream.stdin.write(b"archive bytes")
    stream.stdin.close()
    received = b""
    while chunk := engine.recv(65536):
        received += chunk
    assert received == b"secret\narchive bytes"  # recv returned b'': the write side was half-closed
    engine.close()
    assert stream.wait() == 0


def test_a_header_cut_short_is_end_of_stream():
    stream, engine = _stream()
    engine.sendall(_frame(1, b"ok") + b"\x01\x00\x00")
    engine.close()
    assert stream.stdout.read() == b"ok"

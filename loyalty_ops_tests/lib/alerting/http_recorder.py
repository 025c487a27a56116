"""A real HTTP(S) server on 127.0.0.1 that stands in for PagerDuty's Events API, Slack's Web API and a
webhook receiver, recording every request. No HTTP library is mocked: the clients talk to this socket."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        content_type = self.headers.get("content-type", "")
        if "json" in content_type:
            return json.loads(self.raw.decode())
        return {k: v[-1] for k, v in parse_qs(self.raw.decode()).items()}


class RecordingServer:
    """Answers like the real services: PagerDuty ``202 {"status": "success", "dedup_key": ...}`` on
    ``/v2/enqueue``, Slack ``{"ok": true, "ts": ...}`` on ``/api/chat.postMessage``, ``200 {}`` elsewhere.
    ``fail_next(n, status)`` makes the next n requests answer ``status`` instead."""

    def __init__(self, tls: Optional[tuple[Path, Path]] = None):
        self.requests: list[RecordedRequest] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                record = RecordedRequest(
                    "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, raw
                )
                with server._lock:
                    server.requests.append(record)
                    status = server._failures.pop(0) if server._failures else None
                if status is not None:
                    self._answer(status, {"status": "error", "message": "injected failure"})
                elif self.path.endswith("/v2/enqueue"):
                    body = record.json
                    self._answer(202, {"status": "success", "message": "Event processed",
                                       "dedup_key": body.get("dedup_key") or "generated-dedup-key"})
                elif self.path.endswith("/chat.postMessage"):
                    self._answer(200, {"ok": True, "channel": "C0LOYALTY", "ts": f"1700000000.{len(server.requests):06d}"})
                else:
                    self._answer(200, {})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    def bodies(self, path_suffix: str = "") -> list[Any]:
        return [r.json for r in self.requests if r.path.endswith(path_suffix)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def __enter__(self) -> "RecordingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (also its own CA) and its key, written to ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def unused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HangingServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers (no TLS handshake, no
    HTTP response): what a wedged proxy or an overloaded endpoint looks like to a client."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections.append(connection)  # held open, never read or written

    def __enter__(self) -> "HangingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for connection in self.connections:
            connection.close()
        self._listener.close()

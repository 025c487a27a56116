"""A misbehaving S3 endpoint for tests: a small HTTP proxy on 127.0.0.1 in front of moto's real server.

Every request is forwarded to moto unchanged, unless a rule matches it: then the proxy answers HTTP 500
(an S3 ``InternalError``) or drops the connection without an answer, a given number of times or forever.
The proxy records every request it saw, so a test can assert what the client really sent.

    with S3FaultProxy(s3_server.endpoint_url) as proxy:
        proxy.fail(lambda r: r.method == "PUT" and r.path.endswith(".sha256"), times=1)
        client = proxy.client()
"""

from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import urlsplit

_S3_500 = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str  # without the query string
    query: str

    @property
    def key(self) -> str:
        """The object key (path-style URL: /bucket/key)."""
        return self.path.lstrip("/").partition("/")[2]


@dataclass
class FaultRule:
    matches: Callable[[SeenRequest], bool]
    action: str  # "500" or "drop"
    times: Optional[int]  # None: forever
    hits: int = 0


@dataclass
class S3FaultProxy:
    upstream_url: str
    port: int = 0
    rules: list[FaultRule] = field(default_factory=list)
    seen: list[tuple[SeenRequest, int]] = field(default_factory=list)  # (request, status; 0 = dropped)

    def fail(self, matches: Callable[[SeenRequest], bool], *, times: Optional[int] = None, action: str = "500") -> FaultRule:
        rule = FaultRule(matches, action, times)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _rule_for(self, request: SeenRequest) -> Optional[FaultRule]:
        with self._lock:
            for rule in self.rules:
                if (rule.times is None or rule.hits < rule.times) and rule.matches(request):
                    rule.hits += 1
                    return rule
        return None

    def start(self) -> "S3FaultProxy":
        self._lock = threading.Lock()
        upstream = urlsplit(self.upstream_url)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                path, _, query = self.path.partition("?")
                request = SeenRequest(self.command, path, query)
                body = self._body()
                rule = proxy._rule_for(request)
                if rule is not None and rule.action == "drop":
                    proxy.seen.append((request, 0))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if rule is not None:
                    status, headers, payload = 500, [("Content-Type", "application/xml")], _S3_500
                else:
                    status, headers, payload = self._forward(body)
                proxy.seen.append((request, status))
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(name, value)
                upstream_length = next((v for k, v in headers if k.lower() == "content-length"), None)
                # A HEAD answer has no body but announces the object's length.
                self.send_header("Content-Length", upstream_length if self.command == "HEAD" and upstream_length else str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                conn.close()
                return response.status, response.getheaders(), payload

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "S3FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self, max_attempts: int = 2):
        """A boto3 S3 client through the proxy with botocore's standard retries (as the S3 resource builds)."""
        from botocore.config import Config

        from devstack.s3_endpoint import local_s3_client

        return local_s3_client(self.endpoint_url, Config(retries={"max_attempts": max_attempts, "mode": "standard"}))

    def requests(self, method: str, suffix: str = "", query: str = "") -> list[tuple[SeenRequest, int]]:
        return [
            (r, status) for r, status in self.seen
            if r.method == method and r.path.endswith(suffix) and query in r.query
        ]

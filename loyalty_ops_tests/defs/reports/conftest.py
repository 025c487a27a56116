"""Fixtures of the reports tests: a cluster with max_connections=10, a Redis server, an HTTP server
playing the loyalty API, and the reports' resources."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from devstack.postgres_cluster import LocalPostgres, free_port
from loyalty_ops.defs.reports.resources import ApplicationEndpoints
from loyalty_ops.defs.resources import BackupStorage
from loyalty_ops_tests.conftest import postgres_target


@pytest.fixture(scope="session")
def small_pg() -> Iterator[LocalPostgres]:
    """A cluster of our own with max_connections=10, so a test can push it past 80%."""
    cluster = LocalPostgres(password=f"pw-{uuid.uuid4().hex}", settings=("max_connections=10",))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """Debian's redis-server on 127.0.0.1 with an 8 MB maxmemory; yields its redis:// URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: apt-get install -y redis-server (scripts/bootstrap --test does it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--maxmemory", "8mb", "--maxmemory-policy", "noeviction", "--protected-mode", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FakeApi:
    """What the fake API answers: per path, (HTTP status, JSON body, delay in seconds)."""

    def __init__(self) -> None:
        self.responses: dict[str, tuple[int, dict, float]] = {}
        self.url = ""

    def healthy(self) -> None:
        ok = {"status": "healthy", "timestamp": "2023-11-14T12:00:00Z"}
        self.responses["/health"] = (200, {**ok, "checks": {"database": {"status": "healthy", "message": "Database connection OK", "latency": "2ms"}}}, 0.0)
        self.responses["/ready"] = (200, {**ok, "checks": {n: {"status": "healthy"} for n in ("database", "database_pool", "database_migration")}}, 0.0)


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    api.healthy()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            code, body, delay = api.responses.get(self.path, (404, {"error": "not found"}, 0.0))
            if delay:
                time.sleep(delay)
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


def unreachable_url(scheme: str = "http") -> str:
    """An address where nothing listens (a port we bound and released)."""
    return f"{scheme}://127.0.0.1:{free_port()}"


def plain_metadata(metadata) -> dict:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def invoke(asset, resources: dict, **config):
    """Call an asset function directly (no run, no event log): (metadata, {check name: AssetCheckResult})."""
    import dagster as dg

    params = {name: resources[name] for name in resources if name in asset.required_resource_keys}
    config_cls = {"database_health": "HealthConfig", "bloat_report": "BloatReportConfig", "database_size_report": "SizeReportConfig"}
    kwargs = dict(params)
    key = asset.key.to_user_string()
    if key in config_cls:
        from loyalty_ops.defs.reports import assets as report_assets

        kwargs["config"] = getattr(report_assets, config_cls[key])(**config)
    result = asset(context=dg.build_asset_context(), **kwargs)
    return plain_metadata(result.metadata), {c.check_name: c for c in result.check_results or []}


def report_resources(cluster: LocalPostgres, database: str, backup_dir: Path, **endpoints) -> dict:
    return {
        "postgres": postgres_target(cluster, database),
        "backup_storage": BackupStorage(backup_dir=str(backup_dir)),
        "application_endpoints": ApplicationEndpoints(**{"timeout_s": 2.0, **endpoints}),
    }

"""Start and stop Dagster's webserver and daemon for the run command and the e2e tests.

Two modes:
- ``"dev"`` (default): one ``dagster dev`` process, which runs the webserver, the daemon and a code server.
- ``"production"``: the processes a deployment runs (docs/deploy.md): a code server
  (``dagster code-server start``) serving the ``loyalty_ops`` code location over gRPC, and
  ``dagster-webserver`` and ``dagster-daemon run`` with a workspace that points at it. The code is loaded
  once, by the code server, which also launches the run workers.

Each process leads a new process group that its code servers and run workers join, so ``stop()`` ends
everything they started and nothing is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class DagsterServices:
    dagster_home: Path
    env: Mapping[str, Optional[str]] = field(default_factory=dict)  # None: unset that inherited variable
    host: str = "127.0.0.1"
    port: int = 3000
    workspace: Path = REPO_ROOT / "workspace.yaml"
    log_path: Optional[Path] = None
    mode: str = "dev"
    code_module: str = "loyalty_ops.definitions"
    location_name: str = "loyalty_ops"
    code_server_port: int = 0
    _proc: Optional[subprocess.Popen] = None
    _others: list = field(default_factory=list)
    _log: Optional[object] = None

    @property
    def code_server_pid(self) -> Optional[int]:
        """The code server's process (production mode): run workers are its descendants."""
        for proc in self._others:
            if "code-server" in proc.args:
                return proc.pid
        return None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> "DagsterServices":
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "DAGSTER_HOME": str(self.dagster_home)}
        env = {key: value for key, value in env.items() if value is not None}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._log = log if self.log_path else None
        bin_dir = Path(sys.executable).parent
        workspace = ["-w", str(self.workspace)]
        server = [str(bin_dir / "dagster"), "dev", *workspace, "-h", self.host, "-p", str(self.port)]
        others: list[list[str]] = []
        if self.mode == "production":
            from devstack.postgres_cluster import free_port

            self.code_server_port = self.code_server_port or free_port()
            grpc_workspace = self.dagster_home / "workspace.yaml"
            grpc_workspace.write_text(
                "load_from:\n  - grpc_server:\n"
                f"      host: {self.host}\n      port: {self.code_server_port}\n"
                f"      location_name: {self.location_name}\n"
            )
            workspace = ["-w", str(grpc_workspace)]
            server = [str(bin_dir / "dagster-webserver"), *workspace, "-h", self.host, "-p", str(self.port)]
            others = [
                [
                    str(bin_dir / "dagster"), "code-server", "start", "-m", self.code_module,
                    "--location-name", self.location_name, "-h", self.host, "-p", str(self.code_server_port),
                ],
                [str(bin_dir / "dagster-daemon"), "run", *workspace],
            ]
        elif self.mode != "dev":
            raise ValueError(f"mode must be 'dev' or 'production', got {self.mode!r}")
        # A parent started in the background may ignore SIGINT, and children inherit that: they would then
        # only stop on SIGTERM after the grace period. Dagster shuts down cleanly on SIGINT, so restore it.
        popen = dict(
            cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_default_sigint
        )
        # Each process leads its own process group (its code servers and run workers join it).
        self._proc = subprocess.Popen(server, start_new_session=True, **popen)
        self._others = [subprocess.Popen(cmd, start_new_session=True, **popen) for cmd in others]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in (self._proc, *self._others):
                if proc.poll() is not None:
                    name = Path(proc.args[0]).name
                    self.stop()
                    raise RuntimeError(f"{name} exited with code {proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            self.stop()
            raise TimeoutError(f"the Dagster webserver did not answer on {self.url} within {timeout_s:.0f} s")
        if self.mode == "production":
            try:
                self.wait_for_code_location(max(deadline - time.monotonic(), 1.0))
            except Exception:
                self.stop()
                raise
        return self

    def code_location_status(self) -> tuple[str, Optional[str]]:
        """(load status, error message or None) of ``location_name`` as the webserver sees it."""
        data = self._graphql(
            "{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )["workspaceOrError"]
        for entry in data.get("locationEntries", []):
            if entry["name"] == self.location_name:
                loaded = entry.get("locationOrLoadError") or {}
                error = loaded.get("message") if loaded.get("__typename") == "PythonError" else None
                return entry["loadStatus"], error
        return "MISSING", None

    def _graphql(self, query: str, variables: Optional[dict] = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)["data"]

    def set_pool_limit(self, pool: str, limit: int) -> None:
        """What `dagster instance concurrency set POOL LIMIT` does (and Deployment > Concurrency in the UI)."""
        data = self._graphql(
            "mutation($pool: String!, $limit: Int!) { setConcurrencyLimit(concurrencyKey: $pool, limit: $limit) }",
            {"pool": pool, "limit": limit},
        )
        if data.get("setConcurrencyLimit") is not True:
            raise RuntimeError(f"could not set the limit of pool {pool}: {data}")

    def wait_for_code_location(self, timeout_s: float = 120.0) -> None:
        """Wait until the code location is loaded; raise with Dagster's message if it failed to load.

        A code server that is still starting shows as unreachable: ask the webserver to reload it."""
        deadline = time.monotonic() + timeout_s
        status, error = "MISSING", None
        while time.monotonic() < deadline:
            status, error = self.code_location_status()
            if status == "LOADED" and not error:
                return
            if status == "LOADED" and "Unreachable" not in error:
                raise RuntimeError(f"code location {self.location_name} failed to load: {error}")
            if status == "LOADED":
                time.sleep(0.5)
                self._graphql(
                    "mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) "
                    "{ __typename } }",
                    {"name": self.location_name},
                )
            else:
                time.sleep(0.5)
        raise TimeoutError(f"code location {self.location_name} not loaded within {timeout_s:.0f} s (status {status})")

    def stop(self, grace_s: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        others, self._others = self._others, []
        if proc is None:
            return
        procs = [proc, *others]
        groups = [p.pid for p in procs]  # group leaders (start_new_session), even after they exit
        for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if all(p.poll() is not None for p in procs):
                break
            for pgid in groups:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for p in procs:
                try:
                    p.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    pass
        # Code servers and run workers share the groups; make sure none outlives us.
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log, self._log = self._log, None
        if log is not None:
            log.close()  # type: ignore[attr-defined]

    def graphql_client(self):
        from dagster_graphql import DagsterGraphQLClient

        return DagsterGraphQLClient(self.host, port_number=self.port)

    def wait_for_run(self, run_id: str, timeout_s: float = 300.0) -> str:
        """Poll a run until it finishes; returns its final status name (SUCCESS, FAILURE, CANCELED)."""
        client = self.graphql_client()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = client.get_run_status(run_id).value
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(1)
        raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s")

    def __enter__(self) -> "DagsterServices":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

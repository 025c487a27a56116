"""Start and stop Dagster's webserver and daemon for the run command and the e2e tests.

Two modes:
- ``"dev"`` (default): one ``dagster dev`` process, which runs the webserver, the daemon and a code server.
- ``"production"``: the two processes a deployment runs (docs/deploy.md), ``dagster-daemon run`` and
  ``dagster-webserver``, each loading ``workspace.yaml`` against the instance in ``DAGSTER_HOME``.

Each process leads a new process group that its code servers and run workers join, so ``stop()`` ends
everything they started and nothing is left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]


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
    _proc: Optional[subprocess.Popen] = None
    _others: list = field(default_factory=list)
    _log: Optional[object] = None

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
            server = [str(bin_dir / "dagster-webserver"), *workspace, "-h", self.host, "-p", str(self.port)]
            others = [[str(bin_dir / "dagster-daemon"), "run", *workspace]]
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
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the Dagster webserver did not answer on {self.url} within {timeout_s:.0f} s")

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

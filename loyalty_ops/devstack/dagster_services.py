"""Start and stop Dagster's webserver and daemon (``dagster dev``) for the run command and the e2e tests.

The processes run in their own process group, so ``stop()`` ends everything they started (code servers
included) and nothing is left running.
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


@dataclass
class DagsterServices:
    dagster_home: Path
    env: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 3000
    workspace: Path = REPO_ROOT / "workspace.yaml"
    log_path: Optional[Path] = None
    _proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> "DagsterServices":
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "DAGSTER_HOME": str(self.dagster_home)}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        dagster_bin = Path(sys.executable).with_name("dagster")
        self._proc = subprocess.Popen(
            [str(dagster_bin), "dev", "-w", str(self.workspace), "-h", self.host, "-p", str(self.port)],
            cwd=str(REPO_ROOT),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with code {self._proc.returncode}; see {self.log_path}")
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
        if proc is None or proc.poll() is not None:
            return
        pgid = os.getpgid(proc.pid)
        for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Code servers and run workers share the group; make sure none outlives us.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

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

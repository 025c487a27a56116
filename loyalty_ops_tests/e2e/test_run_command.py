"""The README's run command: embedded PostgreSQL + S3, Dagster up, nightly_backup_job green, and Ctrl-C
leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.postgres_cluster import free_port

REPO = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{pid}: {cmdline[:200]}")
    return found


def test_run_command_runs_the_backup_and_ctrl_c_stops_everything(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LOYALTY_", "DAGSTER_", "AWS_"))}
    env["LOYALTY_BACKUP_DIR"] = str(tmp_path / "backups")
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.run_local", "--port", str(port), "--scale", "0.05"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "nightly_backup_job finished: SUCCESS" in output, output
        assert list((tmp_path / "backups").glob("loyalty_*.dump.gz")), output
        workdir = re.search(r"(/tmp/loyalty-run-local-\w+)", "".join(_processes_mentioning("loyalty-run-local-")))
        assert workdir, "the embedded PostgreSQL should be running from the run command's work directory"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, rest
        assert "nothing left running" in rest
        time.sleep(1)
        assert _processes_mentioning(workdir.group(1)) == []
        assert _processes_mentioning(f"-p {port}") == []
        assert not Path(workdir.group(1)).exists()
    finally:
        if proc.poll() is None:
            proc.kill()

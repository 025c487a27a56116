"""Shared pieces of the benchmark scripts: a sample database of a given size and a moto S3 server in its
own process (so its CPU is not counted in the process being measured)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.postgres_cluster import LocalPostgres, free_port  # noqa: E402
from devstack.s3_endpoint import local_s3_client  # noqa: E402
from devstack.sample_data import create_sample_schema  # noqa: E402

MB_PER_SCALE = 20.0  # create_sample_schema(scale=1.0) is about 20 MB on disk


@contextmanager
def sample_cluster(size_mb: float, database: str = "loyalty", cluster_dir: Optional[Path] = None) -> Iterator[LocalPostgres]:
    """A throwaway cluster holding a sample loyalty database of about ``size_mb`` MB.

    With ``cluster_dir`` the cluster lives there and is kept: a later run with the same directory reuses
    the database instead of generating it again (several benchmarks, or rounds, on one 1.4 GB sample).
    """
    kept = cluster_dir is not None and (Path(cluster_dir) / "data" / "PG_VERSION").exists()
    password_file = Path(cluster_dir) / "benchmark-password" if cluster_dir is not None else None
    password = password_file.read_text().strip() if kept and password_file else os.urandom(8).hex()
    cluster = LocalPostgres(password=password, base_dir=Path(cluster_dir) if cluster_dir is not None else None)
    cluster.start()
    try:
        if password_file is not None and not kept:
            password_file.write_text(password + "\n")
        with cluster.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            cluster.create_database(database)
            started = time.monotonic()
            with cluster.connect(database) as conn:
                create_sample_schema(conn, max(size_mb / MB_PER_SCALE, 0.05))
                conn.execute("CHECKPOINT")
            print(f"sample database generated in {time.monotonic() - started:.0f} s", flush=True)
        with cluster.connect(database) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        print(f"sample database: {size / 1e6:.0f} MB{' (kept from an earlier run)' if exists else ''}", flush=True)
        yield cluster
    finally:
        if cluster_dir is not None:
            cluster.stop()
        else:
            cluster.destroy()


@contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """moto's S3 in its own process: (endpoint, pid), so its CPU can be read apart from ours."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def moto_process() -> Iterator[str]:
    with moto_server() as (url, _pid):
        yield url


def s3_client(endpoint_url: str):
    return local_s3_client(endpoint_url)


def timed_shell(command: str, env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, check=True)
    return time.monotonic() - started


def children_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# The backup as nightly_backup_job runs it (database_backup, its blocking checks, the offsite copy when a
# bucket is given; the restore drill is benchmarks/restore_drill.py's), in a child process so its peak
# RSS is its own. Prints one JSON line: elapsed, peak RSS, steps, the backup's metadata numbers.
BACKUP_CHILD = r"""
import json, os, resource, sys, time
import dagster as dg
from dagster_aws.s3 import S3Resource
from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
args = json.loads(sys.argv[1])
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
resources = {
    "postgres": PostgresTarget(host="127.0.0.1", port=args["port"], user="postgres", password=os.environ["PGPASSWORD"], database="loyalty"),
    "backup_storage": BackupStorage(backup_dir=args["backup_dir"], **args.get("storage", {})),
    "offsite": OffsiteStorage(s3=S3Resource(endpoint_url=args.get("endpoint"), region_name="us-east-1",
        aws_access_key_id="local-access-key", aws_secret_access_key="local-secret-key"), bucket=args.get("bucket")),
}
assets = [database_backup, *BACKUP_CHECKS] + ([offsite_backup_copy] if args.get("bucket") else [])
with dg.instance_for_test(temp_dir=args["dagster_home"]) as instance:
    started, started_at = time.monotonic(), time.time()
    result = dg.materialize(assets, resources=resources, instance=instance)
    elapsed, ended_at = time.monotonic() - started, time.time()
assert result.success
mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
steps = {}
for event in result.all_events:
    if event.event_type_value == "STEP_SUCCESS":
        steps[event.step_key] = event.event_specific_data.duration_ms / 1000
meta = {k: v.value for k, v in mats["database_backup"].items() if isinstance(getattr(v, "value", None), (int, float, str))}
print(json.dumps({
    "elapsed_s": elapsed,
    "started_at": started_at,
    "ended_at": ended_at,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_after_imports_mb": baseline,
    "bytes": meta["bytes"],
    "steps": steps,
    "meta": meta,
    "uploaded": "offsite_backup_copy" in mats,
}))
"""


def run_backup_child(cluster, work: Path, *, endpoint: str | None = None, bucket: str | None = None,
                     storage: dict | None = None, label: str = "ours") -> dict:
    """Run BACKUP_CHILD against ``cluster``'s loyalty database; returns its JSON line (plus process_wall_s)."""
    home = work / f"dagster_home_{label}"
    home.mkdir(exist_ok=True)
    args = {"port": cluster.port, "backup_dir": str(work / f"backups_{label}"), "endpoint": endpoint,
            "bucket": bucket, "dagster_home": str(home), "storage": storage or {}}
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", BACKUP_CHILD, json.dumps(args)],
        env={**os.environ, "PGPASSWORD": cluster.password, "DAGSTER_HOME": str(home)},
        capture_output=True, text=True, cwd=str(work),
    )
    if child.returncode != 0:
        raise RuntimeError(f"backup child failed: {child.stdout[-2000:]} {child.stderr[-4000:]}")
    out = json.loads(child.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.monotonic() - started
    return out


def machine_line() -> str:
    """CPU count, model and the load average, for the benchmark's output."""
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({model or 'unknown model'}), load average {load}"


def cpu_times() -> list[int]:
    """The machine's CPU time so far by kind (/proc/stat: user, nice, system, idle, iowait, irq, softirq, steal)."""
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1:9]]


def stolen_share(before: list[int], after: list[int]) -> float:
    """The share of the CPU time between two :func:`cpu_times` that the hypervisor gave to other machines (steal):
    on a shared VM, how busy the neighbours were while a benchmark ran."""
    spent = [b - a for a, b in zip(before, after)]
    return spent[7] / max(sum(spent), 1)

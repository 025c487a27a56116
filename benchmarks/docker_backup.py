"""Benchmark: a backup through ``docker exec`` (DockerExecToolRunner) next to the host runner, same run,
same server.

A PostgreSQL 15 container (podman's Docker API, host networking, see devstack/podman_engine.py)
gets a sample loyalty database of about ``--scale`` x 20 MB (default 50, about 1 GB). Then, alternating,
each runner takes the backup the nightly job takes (``take_backup``: pg_dump -Fc -Z0 in the dump's
snapshot, compressed, hashed and written by our process), each in a fresh child process so its peak RSS is
its own:

  host:   the host's pg_dump connects to the container's server over TCP
  docker: pg_dump runs inside the container; its output is streamed over the Docker API

Target (issue 9): peak RSS of the docker backup <= 150 MB.

    .venv/bin/python benchmarks/docker_backup.py --scale 50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.podman_engine import PodmanEngine  # noqa: E402
from devstack.sample_data import create_sample_schema  # noqa: E402
from loyalty_ops.lib.pg.connection import ConnectionSpec  # noqa: E402

CHILD_SCRIPT = r"""
import json, os, resource, sys, time
from pathlib import Path
from loyalty_ops.lib.backup.dump import BackupRequest, take_backup
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.docker_runner import DockerExecToolRunner
from loyalty_ops.lib.pg.tools import HostToolRunner
args = json.loads(sys.argv[1])
spec = ConnectionSpec(host="127.0.0.1", port=args["port"], user="postgres", password=os.environ["BENCH_PASSWORD"], dbname="loyalty")
if args["runner"] == "docker":
    runner = DockerExecToolRunner(spec, args["container"], docker_host=args["docker_host"])
else:
    runner = HostToolRunner(spec)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.monotonic()
result = take_backup(spec, runner, BackupRequest(backup_dir=Path(args["backup_dir"]), compression=args["compression"]))
elapsed = time.monotonic() - started
print(json.dumps({
    "elapsed_s": elapsed,
    "dump_s": result.timings.get("dump_s"),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_after_imports_mb": baseline,
    "child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "raw_bytes": result.file.raw_bytes,
    "bytes": result.file.written_bytes,
    "runner": result.runner,
}))
result.path.unlink()
Path(str(result.path) + ".sha256").unlink(missing_ok=True)
"""


def run_child(runner: str, common: dict, password: str) -> dict:
    child = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, json.dumps({**common, "runner": runner})],
        env={**os.environ, "BENCH_PASSWORD": password, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True,
    )
    if child.returncode != 0:
        raise SystemExit(f"{runner} backup failed:\n{child.stdout[-2000:]}\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=50.0, help="sample data scale (1.0 ~ 20 MB; default 50 ~ 1 GB)")
    parser.add_argument("--compression", default="gzip", choices=("gzip", "zstd"))
    parser.add_argument("--rounds", type=int, default=1, help="alternating host/docker rounds (default 1)")
    args = parser.parse_args()

    password = uuid.uuid4().hex
    with PodmanEngine() as engine, tempfile.TemporaryDirectory() as tmp:
        container, port = engine.run_postgres(f"loyalty-db-prod-bench-{uuid.uuid4().hex[:6]}", password=password)
        spec = ConnectionSpec(host="127.0.0.1", port=port, user="postgres", password=password, dbname="postgres")
        import psycopg

        started = time.monotonic()
        with psycopg.connect(**spec.psycopg_kwargs(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE loyalty")
        with psycopg.connect(**spec.with_database("loyalty").psycopg_kwargs(), autocommit=True) as conn:
            create_sample_schema(conn, args.scale)
            conn.execute("CHECKPOINT")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        print(f"sample database in container {container.name}: {size / 1e6:.0f} MB generated in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        common = {
            "port": port, "container": container.name, "docker_host": engine.base_url,
            "backup_dir": str(Path(tmp) / "backups"), "compression": args.compression,
        }
        results: dict[str, list[dict]] = {"host": [], "docker": []}
        run_child("host", common, password)  # warm the server's cache; not counted
        for _ in range(args.rounds):
            for runner in ("host", "docker"):
                res = run_child(runner, common, password)
                results[runner].append(res)
                print(f"{runner}: {res['elapsed_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)

    def best(runner: str, key: str) -> float:
        return min(r[key] for r in results[runner])

    host, docker = results["host"][0], results["docker"][0]
    print()
    print(f"database {size / 1e6:.0f} MB, archive {docker['raw_bytes'] / 1e6:.0f} MB raw, "
          f"{docker['bytes'] / 1e6:.0f} MB {args.compression}")
    print("| runner | backup wall time (s) | pg_dump stream (s) | peak RSS of our process (MB) | after imports (MB) |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("host", "host pg_dump (HostToolRunner)"), ("docker", "docker exec (DockerExecToolRunner)")):
        r = results[name]
        print(f"| {label} | {best(name, 'elapsed_s'):.2f} | {best(name, 'dump_s'):.2f} | "
              f"{max(x['peak_rss_mb'] for x in r):.0f} | {r[0]['rss_after_imports_mb']:.0f} |")
    print()
    print(f"docker/host time = {best('docker', 'elapsed_s') / best('host', 'elapsed_s'):.2f}")
    peak = max(x["peak_rss_mb"] for x in results["docker"])
    print(f"peak RSS of the docker backup: {peak:.0f} MB (target <= 150 MB): {'OK' if peak <= 150 else 'OVER'}")
    print(f"host pg_dump child peak RSS: {host['child_peak_rss_mb']:.0f} MB (runs outside our process)")
    return 0 if peak <= 150 else 1


if __name__ == "__main__":
    sys.exit(main())

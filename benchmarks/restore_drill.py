"""Benchmark: what a restore and a drill cost, per GB and in memory, and what the drill costs production
depending on where it runs. One run, one archive, ratios against baselines measured in the same run.

Part 1, cost (``--part cost``):
  (a) bare:    CREATE DATABASE + pg_restore -j2 of the already-decompressed archive (the floor);
  (b) drill -j2 (verify + decompress to a 0600 temp file, restore, exact counts, drop) and drill -j1
      (verify in a first pass, stream into pg_restore's stdin: no temporary copy);
  (c) restore_job's restore_backup -j2 and -j1 (new database), each in its own process: the peak RSS during
      the restore minus the RSS before it (the peak is reset through /proc/self/clear_refs once the code is
      imported: "the restore's own memory"). pg_restore's memory is not reported: a forked child's peak RSS
      starts from its parent's, so getrusage cannot tell it apart.
  Prints seconds, seconds per GB of database, ratios b/a and c/a, and the memory.

Part 2, production impact (``--part impact``): pgbench (4 clients, TPC-B-like, on a ``bench`` database of the
production server) runs throughout; for each placement of the drill (production, scratch: a PostgreSQL
started for the drill on this machine, server: a second, already running cluster standing for a staging
server) the script runs the dump (the backup code), the checks (the whole-archive read of the integrity
checks) and the drill, and prints TPS per phase as a ratio of idle TPS. On one 2-core machine the scratch
and "server" placements still share the CPU with production: what they spare production here is its own
server's work (WAL, checkpoints, buffer cache, connections); on a separate machine they spare the CPU too.

    flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/restore_drill.py --size-gb 1.4
    flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/restore_drill.py --size-gb 10 --part cost
    .venv/bin/python benchmarks/restore_drill.py --size-gb 0.1        # quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, sample_cluster

from devstack.postgres_cluster import LocalPostgres
from loyalty_ops.lib.backup.integrity import inspect_archive, iter_decompressed
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.restore.placement import DrillPlacement, run_placed_drill
from loyalty_ops.lib.restore.plan import BackupRef, validate_request
from loyalty_ops.lib.restore.run import RestoreEnvironment, restore_backup, run_drill, take_safety_backup

GB = 1e9


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def environment(spec: ConnectionSpec, work: Path) -> RestoreEnvironment:
    return RestoreEnvironment(spec=spec, runner=HostToolRunner(spec), location=BackupLocation(work), log=lambda m: None)


def bare_restore(cluster: LocalPostgres, archive: Path, database: str, jobs: int) -> float:
    env = {"PATH": "/usr/bin:/bin", **cluster.env("postgres")}
    started = time.monotonic()
    cluster.create_database(database)
    subprocess.run(
        [f"{cluster.bin_dir}/pg_restore", "--exit-on-error", f"--jobs={jobs}", f"--dbname={database}", str(archive)],
        env=env, check=True,
    )
    return time.monotonic() - started


# -- the restore in its own process, for its memory ------------------------------------------------------


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_main(spec_json: str) -> None:
    """Run in a child process: one restore (or nothing, for the baseline), then print timings and memory."""
    job = json.loads(spec_json)
    spec = ConnectionSpec(**job["spec"])
    job["rss_before_mb"] = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    if job["backup"]:
        env = environment(spec, Path(job["work"]))
        started = time.monotonic()
        outcome = restore_backup(validate_request(backup=job["backup"], target_database=job["target"], jobs=job["jobs"]), env)
        assert outcome.comparison is not None and outcome.comparison.passed
        job["seconds"] = time.monotonic() - started
        job["streamed"] = outcome.streamed
    job["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    job["restore_peak_rss_mb"] = _status_mb("VmHWM")  # the peak since the reset: during the restore
    job.pop("spec")  # the connection (with its password) stays out of the output
    print("RESULT " + json.dumps(job), flush=True)


def run_child(spec: ConnectionSpec, work: Path, backup: str, target: str, jobs: int) -> dict:
    job = {
        "spec": {"host": spec.host, "port": spec.port, "user": spec.user, "password": spec.password, "dbname": spec.dbname},
        "work": str(work), "backup": backup, "target": target, "jobs": jobs,
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def measure_bare(cluster: LocalPostgres, work: Path, backup: Path) -> tuple[float, float, int]:
    """The floor of a restore: decompress ``backup`` to a file, then CREATE DATABASE + pg_restore -j2 of it
    (dropped after). Returns (restore seconds, decompression seconds, decompressed archive bytes)."""
    raw = work / "bare.dump"
    started = time.monotonic()
    with open(raw, "wb") as out:
        for block in iter_decompressed(backup):
            out.write(block)
    decompress_s = time.monotonic() - started
    raw_bytes = raw.stat().st_size
    try:
        bare = bare_restore(cluster, raw, "bench_bare", 2)
    finally:
        cluster.drop_database("bench_bare")
        raw.unlink()
    print(f"bare pg_restore -j2 from a decompressed file: {bare:.1f} s (decompress first: {decompress_s:.1f} s)  [{uptime()}]", flush=True)
    return bare, decompress_s, raw_bytes


def part_cost(cluster: LocalPostgres, work: Path, backup: Path, db_bytes: int, drill_jobs=(2, 1), restore_jobs=(2, 1)) -> None:
    env = environment(cluster.spec("loyalty"), work)
    gb = db_bytes / GB
    bare, decompress_s, raw_bytes = measure_bare(cluster, work, backup)

    drills = {}
    for jobs in drill_jobs:
        started = time.monotonic()
        result = run_drill(env, BackupRef("file", str(backup)), jobs=jobs)
        drills[jobs] = time.monotonic() - started
        assert result.passed, result.message
        print(f"drill -j{jobs}{' (streamed)' if result.streamed else ''}: {drills[jobs]:.1f} s  [{uptime()}]", flush=True)

    baseline = run_child(cluster.spec("loyalty"), work, "", "", 0)
    restores = {}
    for jobs in restore_jobs:
        target = f"bench_restore_j{jobs}"
        restores[jobs] = run_child(cluster.spec("loyalty"), work, str(backup), target, jobs)
        cluster.drop_database(target)
        r = restores[jobs]
        print(
            f"restore -j{jobs}: {r['seconds']:.1f} s, own memory {r['restore_peak_rss_mb'] - r['rss_before_mb']:.0f} MB  "
            f"[{uptime()}]", flush=True,
        )

    print()
    print(f"== Restore and drill cost: database {human_bytes(db_bytes)}, archive {human_bytes(raw_bytes)} raw / {human_bytes(backup.stat().st_size)} compressed ==")
    print(f"{'':40} {'seconds':>8} {'s per GB':>9} {'ratio to bare':>14}")
    rows = [
        ("bare pg_restore -j2 (decompressed file)", bare),
        ("bare incl. decompress to a file", bare + decompress_s),
        *[(f"drill -j{j} ({'streamed' if j == 1 else 'temp file'})", drills[j]) for j in drill_jobs],
        *[(f"restore -j{j} ({'streamed' if j == 1 else 'temp file'})", restores[j]["seconds"]) for j in restore_jobs],
    ]
    for label, seconds in rows:
        print(f"{label:40} {seconds:8.1f} {seconds / gb:9.1f} {seconds / bare:14.2f}")
    print(f"interpreter with the restore code imported: {baseline['rss_before_mb']:.0f} MB RSS")
    for jobs in restore_jobs:
        r = restores[jobs]
        own = r["restore_peak_rss_mb"] - r["rss_before_mb"]
        print(
            f"restore -j{jobs} own memory (peak RSS during the restore - RSS before it): {own:.0f} MB "
            f"(peak {r['restore_peak_rss_mb']:.0f} MB)"
        )
    print(f"load after: {uptime()}", flush=True)


# -- production impact ----------------------------------------------------------------------------------

PROGRESS = re.compile(r"progress: (\d+\.\d+) s, ([\d.]+) tps")


class Pgbench:
    """pgbench -c4 -j2 with a progress line per second (timestamps), for as long as it is needed."""

    def __init__(self, cluster: LocalPostgres, database: str = "bench", clients: int = 4):
        self.samples: list[tuple[float, float]] = []
        env = {"PATH": "/usr/bin:/bin", **cluster.env(database)}
        self.proc = subprocess.Popen(
            [f"{cluster.bin_dir}/pgbench", "-c", str(clients), "-j", "2", "-T", "36000", "-P", "1", "--progress-timestamp", "-n", database],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            match = PROGRESS.search(line)
            if match:
                self.samples.append((float(match.group(1)), float(match.group(2))))

    def tps(self, start: float, end: float) -> tuple[float, float, int]:
        """Mean and worst-second TPS of the samples inside [start, end] (wall clock)."""
        inside = [tps for at, tps in self.samples if start + 1 <= at <= end]
        if not inside:
            return 0.0, 0.0, 0
        return sum(inside) / len(inside), min(inside), len(inside)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def part_impact(cluster: LocalPostgres, work: Path, placements: list[str], idle_s: float) -> None:
    env_bin = {"PATH": "/usr/bin:/bin", **cluster.env("bench")}
    cluster.create_database("bench")
    subprocess.run([f"{cluster.bin_dir}/pgbench", "-i", "-s", "10", "-q", "bench"], env=env_bin, check=True, capture_output=True)
    staging = None
    if "server" in placements:
        staging = LocalPostgres(password=os.urandom(8).hex()).start()
    env = environment(cluster.spec("loyalty"), work)
    bench = Pgbench(cluster)
    results: dict[str, dict[str, tuple[float, float, float]]] = {}
    try:
        time.sleep(2)
        t0 = time.time()
        time.sleep(idle_s)
        idle = bench.tps(t0, time.time())
        print(f"idle: {idle[0]:.0f} TPS (worst second {idle[1]:.0f}) over {idle[2]} s  [{uptime()}]", flush=True)
        for placement in placements:
            phases = {}
            t = time.time()
            backup = take_safety_backup(env, "loyalty")
            phases["dump"] = (t, time.time())
            t = time.time()
            inspection = inspect_archive(backup)
            assert inspection.archive is not None, inspection.archive_error
            phases["checks"] = (t, time.time())
            if placement == "server":
                assert staging is not None
                where = DrillPlacement("server", server=staging.spec("postgres"))
            else:
                where = DrillPlacement(placement, scratch_dir=work / "scratch")
            t = time.time()
            result = run_placed_drill(env, BackupRef("file", str(backup)), where, jobs=2)
            phases["drill"] = (t, time.time())
            assert result.passed, result.message
            for suffix in ("", ".sha256", ".manifest.json"):
                Path(str(backup) + suffix).unlink(missing_ok=True)
            results[placement] = {
                phase: (end - start, *bench.tps(start, end)[:2]) for phase, (start, end) in phases.items()
            }
            line = ", ".join(f"{p} {s:.0f} s at {tps / idle[0]:.2f}x" for p, (s, tps, _) in results[placement].items())
            print(f"placement {placement}: {line}  [{uptime()}]", flush=True)
    finally:
        bench.stop()
        if staging is not None:
            staging.destroy()
    print()
    print(f"== Production TPS per phase (pgbench -c4 on the production server; idle {idle[0]:.0f} TPS) ==")
    print(f"{'placement':12} {'phase':8} {'seconds':>8} {'TPS':>7} {'x idle':>7} {'worst s':>8}")
    for placement, phases in results.items():
        for phase, (seconds, tps, worst) in phases.items():
            print(f"{placement:12} {phase:8} {seconds:8.1f} {tps:7.0f} {tps / idle[0]:7.2f} {worst / idle[0]:8.2f}")
    print(f"load after: {uptime()}", flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.4, help="sample database size on disk (default 1.4)")
    parser.add_argument("--part", choices=["cost", "impact", "both"], default="both")
    parser.add_argument("--placements", default="production,scratch,server", help="for --part impact")
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--work-dir", default=None, help="where archives and temp files go (default: a temp dir)")
    parser.add_argument("--drill-jobs", default="2,1", help="drills measured by --part cost (default 2,1)")
    parser.add_argument("--restore-jobs", default="2,1", help="restores measured by --part cost (default 2,1)")
    args = parser.parse_args()

    print(f"restore/drill benchmark, {args.size_gb} GB, part {args.part}; {os.cpu_count()} CPUs; {uptime()}", flush=True)
    with sample_cluster(args.size_gb * 1000) as cluster, tempfile.TemporaryDirectory(prefix="restore-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the scratch server (postgres OS user) lives under it
        with cluster.connect("loyalty") as conn:
            db_bytes = int(conn.execute("SELECT pg_database_size('loyalty')").fetchone()[0])
        env = environment(cluster.spec("loyalty"), work)
        started = time.monotonic()
        backup = take_safety_backup(env, "loyalty")
        print(f"database {human_bytes(db_bytes)}; backup {backup.name} {human_bytes(backup.stat().st_size)} in {time.monotonic() - started:.1f} s", flush=True)
        if args.part in ("cost", "both"):
            part_cost(
                cluster, work, backup, db_bytes,
                tuple(int(j) for j in args.drill_jobs.split(",") if j), tuple(int(j) for j in args.restore_jobs.split(",") if j),
            )
        if args.part in ("impact", "both"):
            part_impact(cluster, work, [p.strip() for p in args.placements.split(",") if p.strip()], args.idle_seconds)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

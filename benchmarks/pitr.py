"""PITR benchmark (never in CI): barman-cloud against the logical tools on one sample database, in one run.

1. Base backup (barman-cloud-backup, as base_backup runs it: gzip, 2 upload processes) vs the floor of a logical
   dump (pg_dump -Fc -Z0 to /dev/null).
2. PITR restore to a point LOAD_SECONDS after the base backup (pgbench writing in between) vs a logical restore
   of the same data (pg_restore -j2 of a pg_dump -Fc into a new database: the core of restore_job; target <= 0.5x).
3. Achieved RPO under pgbench load with archive_timeout=60: a probe commits a row every second; for each commit,
   the time until the WAL segment holding it is an object in the bucket (target: every commit within 60 s).
4. Archiving's cost on the server: pgbench TPS with archiving on vs off (target >= 0.9x).

Run under the machine-wide lock:  flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/pitr.py --size-mb 1400
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import REPO, machine_line, moto_process, s3_client  # noqa: F401  (sets sys.path)

from devstack.postgres_cluster import LocalPostgres, archiving_settings, server_engine_dir  # noqa: E402
from devstack.s3_endpoint import LOCAL_CREDENTIALS  # noqa: E402
from devstack.sample_data import create_sample_schema  # noqa: E402
from loyalty_ops.lib.pitr.archive import wal_file_name  # noqa: E402
from loyalty_ops.lib.pitr.engine import BarmanCloud, S3Access, archive_command, restore_command  # noqa: E402
from loyalty_ops.lib.pitr.instance import ScratchInstance, free_port  # noqa: E402
from loyalty_ops.lib.pitr.location import PitrLocation  # noqa: E402
from loyalty_ops.lib.pitr.recover import recover  # noqa: E402
from loyalty_ops.lib.pitr.target import RecoveryTarget  # noqa: E402

PROGRESS = re.compile(r"progress: ([0-9.]+) s, ([0-9.]+) tps")
BIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Pgbench:
    def __init__(self, cluster: LocalPostgres, seconds: float, clients: int = 4):
        self.samples: list[tuple[float, float]] = []
        self.proc = subprocess.Popen(
            [f"{cluster.bin_dir}/pgbench", "-c", str(clients), "-j", "2", "-T", str(int(seconds)), "-P", "1",
             "--progress-timestamp", "-n", "bench"],
            env={**BIN_ENV, **cluster.env("bench")}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            found = PROGRESS.search(line)
            if found:
                self.samples.append((float(found.group(1)), float(found.group(2))))

    def wait(self) -> float:
        self.proc.wait()
        self.thread.join(5)
        inside = [tps for _, tps in self.samples[2:]]
        return statistics.mean(inside) if inside else 0.0


class BucketWatcher:
    """Polls the bucket every 0.5 s and records when each WAL segment first appears."""

    def __init__(self, s3, location: PitrLocation):
        self.s3, self.location, self.first_seen, self.stop = s3, location, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        paginator = self.s3.get_paginator("list_objects_v2")
        while not self.stop.is_set():
            now = time.time()
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self.location.wal_prefix):
                for item in page.get("Contents", []):
                    self.first_seen.setdefault(wal_file_name(item["Key"]), now)
            self.stop.wait(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1400)
    parser.add_argument("--load-seconds", type=float, default=300, help="pgbench load between base backup and target")
    parser.add_argument("--tps-seconds", type=float, default=60, help="pgbench run for archiving on vs off")
    parser.add_argument("--archive-timeout", type=int, default=60)
    args = parser.parse_args()
    say(f"machine: {machine_line()}")
    work = Path(tempfile.mkdtemp(prefix="loyalty-bench-pitr-"))
    os.chmod(work, 0o755)
    with moto_process() as endpoint:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket="bench-pitr")
        location = PitrLocation.of("bench-pitr", "pitr/", "loyalty")
        access = S3Access(endpoint_url=endpoint, region=LOCAL_CREDENTIALS["AWS_REGION"],
                          credentials={k: v for k, v in LOCAL_CREDENTIALS.items() if k != "AWS_REGION"})
        settings = archiving_settings(archive_command(server_engine_dir(), location, access), args.archive_timeout)
        cluster = LocalPostgres(password=os.urandom(8).hex(), base_dir=work / "pg", environment=access.env(),
                                settings=("full_page_writes=on", "max_wal_size=4GB"))
        cluster.start()
        try:
            # 4. archiving off first (the cluster starts without it), pgbench database
            cluster.create_database("bench")
            subprocess.run([f"{cluster.bin_dir}/pgbench", "-i", "-s", "20", "-q", "bench"], env={**BIN_ENV, **cluster.env("bench")},
                           check=True, capture_output=True)
            tps_off = Pgbench(cluster, args.tps_seconds).wait()
            say(f"pgbench archiving OFF: {tps_off:.0f} tps ({os.getloadavg()[0]:.2f} load)")
            cluster.stop()
            cluster.settings = (*cluster.settings, *settings)
            cluster.start()
            tps_on = Pgbench(cluster, args.tps_seconds).wait()
            say(f"pgbench archiving ON:  {tps_on:.0f} tps ({os.getloadavg()[0]:.2f} load)")

            cluster.create_database("loyalty")
            started = time.monotonic()
            with cluster.connect("loyalty") as conn:
                create_sample_schema(conn, max(args.size_mb / 20.0, 0.05))
                conn.execute("CHECKPOINT")
                db_bytes = conn.execute("SELECT pg_database_size('loyalty')").fetchone()[0]
            say(f"sample database {db_bytes / 1e6:.0f} MB in {time.monotonic() - started:.0f} s")
            env = {**BIN_ENV, **cluster.env("loyalty")}

            # 1. base backup vs pg_dump -Fc -Z0 floor
            started = time.monotonic()
            subprocess.run(f"{cluster.bin_dir}/pg_dump -Fc -Z0 loyalty > /dev/null", shell=True, env=env, check=True)  # -f /dev/null fails its fsync
            dump_floor = time.monotonic() - started
            engine = BarmanCloud(location, access, str(Path(sys.executable).parent), base_env=BIN_ENV)
            started = time.monotonic()
            backup_id, _ = engine.backup(cluster.spec("postgres").libpq_env(), jobs=2)
            base_s = time.monotonic() - started
            cluster_bytes = next(b.cluster_size for b in engine.list_backups() if b.backup_id == backup_id)
            say(f"base backup {base_s:.1f} s ({cluster_bytes / 1e6:.0f} MB cluster) vs pg_dump -Fc -Z0 {dump_floor:.1f} s "
                f"({db_bytes / 1e6:.0f} MB database)")

            # 3 + 2. load for LOAD_SECONDS with the RPO probe, then a target at its end
            watcher = BucketWatcher(s3, location)
            load = Pgbench(cluster, args.load_seconds)
            commits: list[tuple[float, str]] = []
            with cluster.connect("bench") as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS rpo_probe (at timestamptz DEFAULT clock_timestamp())")
                end = time.time() + args.load_seconds
                while time.time() < end:
                    conn.execute("INSERT INTO rpo_probe DEFAULT VALUES")
                    (segment,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()
                    commits.append((time.time(), segment))
                    time.sleep(1.0)
            load_tps = load.wait()
            with cluster.connect("bench") as conn:
                target_time = conn.execute("SELECT clock_timestamp()").fetchone()[0]
                conn.execute("SELECT pg_switch_wal()")
            deadline = time.time() + 240
            while time.time() < deadline and not all(s in watcher.first_seen for _, s in commits):
                time.sleep(0.5)
            watcher.stop.set()
            rpos = sorted(watcher.first_seen.get(s, float("inf")) - at for at, s in commits)
            p50, p99, worst = rpos[len(rpos) // 2], rpos[min(int(len(rpos) * 0.99), len(rpos) - 1)], rpos[-1]
            say(f"RPO under pgbench ({load_tps:.0f} tps) with archive_timeout={args.archive_timeout}: {len(rpos)} commits, "
                f"p50 {p50:.1f} s, p99 {p99:.1f} s, max {worst:.1f} s; within {args.archive_timeout} s: "
                f"{sum(r <= args.archive_timeout for r in rpos)}/{len(rpos)}")

            instance = ScratchInstance(work / "recovered", free_port(), cluster.bin_dir, environment={**BIN_ENV, **access.env()})
            backup = next(b for b in engine.list_backups() if b.backup_id == backup_id)
            target = RecoveryTarget("time", time=target_time.astimezone(timezone.utc))
            try:
                result = recover(engine, instance, backup, target,
                                 restore_command(server_engine_dir(), location, access, str(instance.spool_dir)),
                                 cluster.spec(), say)
            finally:
                instance.remove()
            pitr_s = result.rto_s
            say(f"PITR restore to {args.load_seconds:.0f} s after the base backup: {pitr_s:.1f} s (download "
                f"{result.timings['download_s']:.1f} s, replay of {result.segments_restored} segments "
                f"{result.timings['recovery_s']:.1f} s)")

            # 2. the logical restore of the same data
            dump = work / "loyalty.dump"
            subprocess.run([f"{cluster.bin_dir}/pg_dump", "-Fc", "-f", str(dump), "loyalty"], env=env, check=True)
            cluster.create_database("loyalty_logical")
            started = time.monotonic()
            subprocess.run([f"{cluster.bin_dir}/pg_restore", "-j", "2", "--exit-on-error", "-d", "loyalty_logical", str(dump)],
                           env={**BIN_ENV, **cluster.env("loyalty_logical")}, check=True)
            logical_s = time.monotonic() - started
            say(f"logical restore (pg_restore -j2 of pg_dump -Fc): {logical_s:.1f} s")

            print("\n== PITR benchmark ==")
            print(f"machine: {machine_line()}  (at the end)")
            print(f"database {db_bytes / 1e6:.0f} MB, cluster {cluster_bytes / 1e6:.0f} MB")
            print(f"base backup / pg_dump -Fc -Z0 floor:        {base_s:.1f} s / {dump_floor:.1f} s = {base_s / dump_floor:.2f}x")
            print(f"PITR restore / logical restore:             {pitr_s:.1f} s / {logical_s:.1f} s = {pitr_s / logical_s:.2f}x (target <= 0.5x)")
            print(f"RPO under load (archive_timeout {args.archive_timeout} s):    p50 {p50:.1f} s, p99 {p99:.1f} s, max {worst:.1f} s "
                  f"(target: max <= {args.archive_timeout} s)")
            print(f"pgbench TPS archiving on / off:             {tps_on:.0f} / {tps_off:.0f} = {tps_on / tps_off:.2f}x (target >= 0.9x)")
            print(f"finished {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        finally:
            cluster.destroy()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

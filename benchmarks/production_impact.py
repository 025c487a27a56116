"""Benchmark: what a backup costs the database's own users, with and without each lever, in one run.

A write load of pgbench (4 clients, TPC-B-like, in its own database on the same server as the sample
loyalty database) runs throughout. For each phase the benchmark takes the transactions pgbench logged
while the phase ran, and prints TPS, p99 latency and the worst one-second TPS, as ratios to the idle
phase measured in the same run:

  idle                      pgbench alone
  guide                     pg_dump -Fc | gzip > file  (the operations guide's way)
  ours                      the backup of nightly_backup_job: dump, compress, hash, row counts, blocking checks
  ours, rate limit          ... with LOYALTY_BACKUP_MAX_RATE_MBPS=--rate-mbps (each rate given)
  ours, nice                ... with LOYALTY_BACKUP_NICE=--nice
  ours, rate limit + nice   ... both
  ours, from a standby      ... with LOYALTY_BACKUP_SOURCE_HOST pointing at a streaming standby (--standby)

For our backup the phase is the Dagster run itself (from the materialization's start to its end); the
worker process's start-up before it (Python and Dagster imports, a few seconds of one core, before any
snapshot is taken) is left out, as pg_dump's own start-up is for the guide. Neither the S3 upload nor the restore drill is part of these phases: S3 is another machine in production
(here it would be moto's CPU on the same two cores), and where the drill runs is a setting of its own
(benchmarks/restore_drill.py measures each placement). The standby runs on the same machine here, so it
still competes for the same CPUs and disk: on real hardware it is another machine and spares the primary
more than this shows. Goal (issue 16): TPS during our backup >= 0.8 x idle, p99 <= 2 x idle.

    flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/production_impact.py --size-mb 1400
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import quantiles

from _common import machine_line, run_backup_child, sample_cluster, timed_shell

from devstack.postgres_cluster import LocalPostgres


def start_pgbench(cluster, log_dir: Path, clients: int) -> subprocess.Popen:
    env = {"PATH": f"{cluster.bin_dir}:/usr/bin:/bin", **cluster.env("pgbench")}
    return subprocess.Popen(
        [f"{cluster.bin_dir}/pgbench", "-n", "-c", str(clients), "-j", "2", "-T", "36000", "-l",
         f"--log-prefix={log_dir}/pgbench"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(log_dir),
    )


def read_transactions(log_dir: Path) -> list[tuple[float, float]]:
    """(completion time, latency ms) of every transaction pgbench logged."""
    out = []
    for path in log_dir.glob("pgbench.*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 6:
                out.append((int(parts[4]) + int(parts[5]) / 1e6, int(parts[2]) / 1000))
    return out


def phase_numbers(transactions, start: float, end: float) -> dict:
    inside = [(t, lat) for t, lat in transactions if start <= t < end]
    latencies = sorted(lat for _, lat in inside)
    per_second: dict[int, int] = {}
    for t, _ in inside:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    whole = [per_second.get(s, 0) for s in range(int(start) + 1, int(end))]  # complete seconds only
    return {
        "seconds": end - start,
        "tps": len(inside) / (end - start),
        "p99_ms": quantiles(latencies, n=100)[98] if len(latencies) >= 100 else float("nan"),
        "worst_second_tps": min(whole) if whole else float("nan"),
    }


TICK = os.sysconf("SC_CLK_TCK")
PARTIES = ("pgbench sessions", "pgbench client", "backup's session", "backup tools", "other server")


class CpuByParty:
    """CPU seconds by party, sampled from /proc every quarter second (a process that ends between two samples
    keeps its last reading): the server's sessions of pgbench and of the backup (told apart by the database in
    their process title), the rest of the server, the pgbench client, and the backup's own processes (this
    benchmark's descendants: the Dagster worker, pg_dump, gzip)."""

    def __init__(self, me: int, pgbench_pid: int):
        self.me, self.pgbench_pid = me, pgbench_pid
        self.seen: dict[tuple[int, str], tuple[str, float]] = {}  # (pid, start time) -> (party, CPU s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _party(self, pid: int, ppid: dict[int, int]) -> str | None:
        if pid == self.pgbench_pid:
            return "pgbench client"
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        if title.startswith("postgres: "):
            if " pgbench " in title:
                return "pgbench sessions"
            if " loyalty " in title:
                return "backup's session"
            return "other server"
        if "postgres" in title.split(" ", 1)[0]:
            return "other server"  # a postmaster
        up, hops = pid, 0
        while up > 1 and hops < 20:
            up, hops = ppid.get(up, 0), hops + 1
            if up == self.me:
                return "backup tools"
        return None

    def _sample(self) -> None:
        stats: dict[int, list[str]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    raw = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                stats[int(entry)] = raw[raw.rindex(")") + 2:].split()
        ppid = {pid: int(fields[1]) for pid, fields in stats.items()}
        for pid, fields in stats.items():
            if pid == self.me:
                continue
            key = (pid, fields[19])
            # a server process's party is known once it has set its title; until then (and for a postmaster)
            # it is asked again at the next sample
            known = self.seen.get(key, (None, 0.0))[0]
            party = known if known not in (None, "other server") else self._party(pid, ppid)
            if party is not None:
                self.seen[key] = (party, (int(fields[11]) + int(fields[12])) / TICK)

    def _run(self) -> None:
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(0.25)

    def totals(self) -> dict[str, float]:
        self._sample()
        out = dict.fromkeys(PARTIES, 0.0)
        for party, cpu in list(self.seen.values()):
            out[party] += cpu
        return out


def make_standby(primary: LocalPostgres, base: Path) -> LocalPostgres:
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    subprocess.run(
        primary._as_os_user() + [
            f"{primary.bin_dir}/pg_basebackup", "-h", str(primary.socket_dir), "-p", str(primary.port), "-U", "postgres",
            "-D", str(base / "data"), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
        ],
        check=True, capture_output=True,
    )
    return LocalPostgres(password=primary.password, base_dir=base).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1400, help="sample database size on disk (default 1400)")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients (default 4)")
    parser.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i -s (default 10, about 150 MB)")
    parser.add_argument("--idle-s", type=float, default=20, help="length of the idle phase (default 20 s)")
    parser.add_argument("--rate-mbps", default="60", help="the rate limit lever, MB/s; a comma-separated list runs "
                        "one phase for each (default 60); 'rate limit + nice' takes the last")
    parser.add_argument("--nice", type=int, default=10, help="the CPU priority lever (default 10)")
    parser.add_argument("--no-standby", action="store_true", help="skip the standby phase")
    parser.add_argument("--cluster-dir", type=Path, help="keep the sample cluster here and reuse it in later runs")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rate_mbps.split(",")]
    print(f"machine: {machine_line()}", flush=True)

    with sample_cluster(args.size_mb, cluster_dir=args.cluster_dir) as cluster, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the standby's data directory below belongs to the server's OS user
        env = {"PATH": f"{cluster.bin_dir}:/usr/bin:/bin", **cluster.env("loyalty")}
        cluster.create_database("pgbench", drop_existing=True)
        subprocess.run([f"{cluster.bin_dir}/pgbench", "-i", "-q", "-s", str(args.pgbench_scale)],
                       env={**env, **cluster.env("pgbench")}, check=True, capture_output=True)
        timed_shell("pg_dump -Fc -Z0 > /dev/null", env)  # warm the page cache
        standby_dir = work / "standby"
        standby_dir.mkdir()
        standby = None if args.no_standby else make_standby(cluster, standby_dir)

        phases: list[tuple[str, object]] = [
            ("idle", lambda: time.sleep(args.idle_s)),
            ("guide: pg_dump -Fc | gzip", lambda: timed_shell(f"pg_dump -Fc | gzip > {work}/guide.dump.gz", env)),
            ("ours", lambda: run_backup_child(cluster, work, label="plain")),
            *[(f"ours, rate limit {rate:g} MB/s",
               lambda rate=rate: run_backup_child(cluster, work, label="rate", storage={"max_rate_mbps": rate}))
              for rate in rates],
            (f"ours, nice {args.nice}", lambda: run_backup_child(cluster, work, label="nice", storage={"nice": args.nice})),
            (f"ours, rate limit {rates[-1]:g} MB/s + nice", lambda: run_backup_child(
                cluster, work, label="both", storage={"max_rate_mbps": rates[-1], "nice": args.nice})),
        ]
        if standby is not None:
            phases.append(("ours, from a standby (same machine)", lambda: run_backup_child(
                cluster, work, label="standby", storage={"source_host": "127.0.0.1", "source_port": standby.port})))

        log_dir = work / "pgbench-logs"
        log_dir.mkdir()
        bench = start_pgbench(cluster, log_dir, args.clients)
        cpu = CpuByParty(os.getpid(), bench.pid)
        windows = []
        try:
            time.sleep(5)  # pgbench settles
            for name, run in phases:
                start, cpu_before = time.time(), cpu.totals()
                outcome = run()
                end, cpu_after = time.time(), cpu.totals()
                used = {party: cpu_after[party] - cpu_before[party] for party in PARTIES}
                if isinstance(outcome, dict):  # the run itself, without the interpreter's start-up and imports
                    start, end = outcome["started_at"], outcome["ended_at"]
                windows.append((name, start, end, outcome, used))
                print(f"  {name}: {end - start:.1f} s   (load {os.getloadavg()[0]:.2f})", flush=True)
                for leftover in work.glob("backups_*"):
                    shutil.rmtree(leftover)
                (work / "guide.dump.gz").unlink(missing_ok=True)
                time.sleep(3)  # let the server settle between phases
            time.sleep(2)  # pgbench's buffered log lines of the last phase reach the files
        finally:
            cpu.stop.set()
            bench.send_signal(signal.SIGTERM)
            bench.wait(30)
            if standby is not None:
                standby.stop("immediate")
        transactions = read_transactions(log_dir)

    idle = phase_numbers(transactions, windows[0][1], windows[0][2])
    print()
    print(f"pgbench: {args.clients} clients, scale {args.pgbench_scale}, same server as the {args.size_mb:g} MB sample")
    # transactions lost: what pgbench would have done at its idle rate in the phase's time, minus what it did
    print("| phase | time (s) | TPS | TPS / idle | p99 (ms) | p99 / idle | worst second / idle TPS | transactions lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, start, end, outcome, _ in windows:
        n = phase_numbers(transactions, start, end)
        print(f"| {name} | {n['seconds']:.1f} | {n['tps']:.0f} | {n['tps'] / idle['tps']:.2f} | {n['p99_ms']:.1f} | "
              f"{n['p99_ms'] / idle['p99_ms']:.2f} | {n['worst_second_tps'] / idle['tps']:.2f} | "
              f"{(idle['tps'] - n['tps']) * n['seconds']:,.0f} |")
    print()
    print("CPU by party during each phase, in cores (CPU seconds per second of the whole phase, the backup's "
          "interpreter start-up included; 2.00 = both cores):")
    print("| phase | " + " | ".join(PARTIES) + " | all |")
    print("|---|" + "---:|" * (len(PARTIES) + 1))
    for name, start, end, outcome, used in windows:
        wall = (outcome.get("process_wall_s") if isinstance(outcome, dict) else None) or (end - start)
        print(f"| {name} | " + " | ".join(f"{used[p] / wall:.2f}" for p in PARTIES) + f" | {sum(used.values()) / wall:.2f} |")
    print()
    for name, _, _, outcome, _ in windows:
        if isinstance(outcome, dict):
            meta = outcome["meta"]
            print(f"{name}: steps {', '.join(f'{k} {v:.1f}s' for k, v in outcome['steps'].items())}; "
                  f"rows from {meta.get('row_counts_source')}; throttled {meta.get('throttled_s', 0):.1f} s")
    print(f"machine after the run: {machine_line()}")
    print("Goal: TPS during our backup >= 0.8 x idle, p99 <= 2 x idle.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

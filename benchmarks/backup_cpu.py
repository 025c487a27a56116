"""Benchmark: where the backup's CPU goes, thread by thread and process by process, against the floor's.

Wall-clock ratios need a quiet machine; CPU seconds (user + sys of each thread and process, read from
``/proc``) hold on a busy one, so this is the tool for deciding what to make cheaper. It runs:

  floor:   ``pg_dump -Fc -Z0 > file``: pg_dump's CPU and the server backend's (its COPY)
  dump:    ``take_backup`` (pg_dump -> row-count walk, compressor, SHA-256 -> file), per thread of the
           backup process, pg_dump, pg_dumpall and the server backends
  verify:  ``inspect_archive`` of the file written (hash, decompress, walk every data block, pg_restore --list)

each in a child process so its threads and peak RSS are its own, and prints CPU seconds per thread and
process, wall time, and the peak RSS the step added to the process (after its imports).

    flock -s /tmp/loyalty-bench.lock .venv/bin/python benchmarks/backup_cpu.py --size-mb 400 --cluster-dir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, machine_line, sample_cluster

# The sampler: every INTERVAL, the CPU ticks of each thread of this process (named by threading), of its
# child processes and of the server's backends. A thread or process that ends keeps its last sample.
SAMPLER = r"""
import os, threading, time

TICK = os.sysconf("SC_CLK_TCK")


def _ticks(stat_path):
    try:
        with open(stat_path) as handle:
            text = handle.read()
    except OSError:
        return None
    comm_end = text.rindex(")")
    fields = text[comm_end + 2:].split()
    return text[text.index("(") + 1:comm_end], int(fields[1]), int(fields[11]) + int(fields[12])


class Sampler(threading.Thread):
    def __init__(self, postmaster_pid, interval=0.05):
        super().__init__(name="cpu-sampler", daemon=True)
        self.postmaster = postmaster_pid
        self.interval = interval
        self.threads, self.procs = {}, {}
        self.stop = threading.Event()
        self.base_threads = self._thread_ticks()

    def _thread_ticks(self):
        names = {t.native_id: t.name for t in threading.enumerate()}
        out = {}
        for tid in os.listdir("/proc/self/task"):
            got = _ticks(f"/proc/self/task/{tid}/stat")
            if got:
                out[int(tid)] = (names.get(int(tid), got[0]), got[2])
        return out

    def sample(self):
        for tid, (name, ticks) in self._thread_ticks().items():
            base = self.base_threads.get(tid, (name, 0))[1]
            self.threads[tid] = (name, ticks - base)
        me = os.getpid()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            got = _ticks(f"/proc/{pid}/stat")
            if not got or got[1] not in (me, self.postmaster):
                continue
            if got[1] == self.postmaster:
                try:
                    cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip()
                except OSError:
                    continue
                parts = cmd.split()
                if len(parts) < 3 or parts[0] != "postgres:" or parts[1] in ("checkpointer", "background", "walwriter",
                        "autovacuum", "logical", "archiver", "stats", "startup", "walsender"):
                    continue
                name = "server backend"
            else:
                name = got[0]
            first = self.procs.get(int(pid), (name, got[2], got[2]))[1]
            self.procs[int(pid)] = (name, first, got[2])

    def run(self):
        self.own_tid = threading.get_native_id()
        while not self.stop.wait(self.interval):
            self.sample()

    def finish(self):
        self.stop.set()
        self.join()
        self.sample()
        threads, procs = {}, {}
        for tid, (name, ticks) in self.threads.items():
            if tid != getattr(self, "own_tid", None) and name != "cpu-sampler":
                threads[name] = threads.get(name, 0) + ticks / TICK
        for pid, (name, first, last) in self.procs.items():
            # a backend already running before the step (none here) would count from its first sample
            procs[name] = procs.get(name, 0) + last / TICK
        return {"threads": threads, "processes": procs}
"""

CHILD = SAMPLER + r"""
import json, resource, sys
from pathlib import Path
args = json.loads(sys.argv[1])
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.backup.dump import BackupRequest, take_backup
from loyalty_ops.lib.backup.integrity import inspect_archive
import dagster  # noqa: F401  (the backup runs in a process that has Dagster imported; count only what it adds)
spec = ConnectionSpec(host="127.0.0.1", port=args["port"], user="postgres", password=os.environ["PGPASSWORD"], dbname="loyalty")
runner = HostToolRunner(spec, args["bin_dir"], base_env={"PATH": "/usr/bin:/bin"})
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"rss_after_imports_mb": baseline}
if args["step"] == "dump":
    sampler = Sampler(args["postmaster"]); sampler.start()
    started = time.monotonic()
    result = take_backup(spec, runner, BackupRequest(backup_dir=Path(args["backup_dir"]), **args.get("request", {})))
    out["wall_s"] = time.monotonic() - started
    out["cpu"] = sampler.finish()
    out["timings"] = result.timings
    out["path"] = str(result.path)
    out["raw_bytes"], out["written_bytes"] = result.file.raw_bytes, result.file.written_bytes
    out["row_counts_source"] = result.row_counts_source
else:
    toc = runner.start("pg_restore", ["--list"], stdin=True, stdout=True)
    sampler = Sampler(args["postmaster"]); sampler.start()
    started = time.monotonic()
    inspection = inspect_archive(Path(args["path"]), toc)
    out["wall_s"] = time.monotonic() - started
    out["cpu"] = sampler.finish()
    assert inspection.archive is not None, inspection.archive_error
    out["data_blocks"] = inspection.archive.data_blocks
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["children_cpu_s"] = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
print(json.dumps(out))
"""

FLOOR = SAMPLER + r"""
import json, resource, subprocess, sys
args = json.loads(sys.argv[1])
sampler = Sampler(args["postmaster"]); sampler.start()
started = time.monotonic()
with open(args["path"], "wb") as out_file:
    subprocess.run([args["bin_dir"] + "/pg_dump", "-Fc", "-Z0"], stdout=out_file, check=True)
wall = time.monotonic() - started
cpu = sampler.finish()
cpu["processes"]["pg_dump"] = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
print(json.dumps({"wall_s": wall, "cpu": cpu}))
"""


def _run(script: str, args: dict, env: dict) -> dict:
    child = subprocess.run([sys.executable, "-c", script, json.dumps(args)], env=env, capture_output=True, text=True, cwd=str(REPO))
    if child.returncode != 0:
        raise RuntimeError(f"child failed: {child.stdout[-2000:]} {child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _print_cpu(label: str, run: dict) -> None:
    cpu = run["cpu"]
    rows = [(f"thread {k}", v) for k, v in sorted(cpu["threads"].items(), key=lambda kv: -kv[1]) if v >= 0.01]
    rows += [(f"process {k}", v) for k, v in sorted(cpu["processes"].items(), key=lambda kv: -kv[1]) if v >= 0.01]
    total = sum(v for _, v in rows)
    print(f"\n{label}: wall {run['wall_s']:.2f} s, CPU {total:.2f} s"
          + (f", peak RSS added {run['peak_rss_mb'] - run['rss_after_imports_mb']:.0f} MB" if "peak_rss_mb" in run else ""))
    print("| thread / process | CPU (s) |")
    print("|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=400, help="sample database size on disk (default 400)")
    parser.add_argument("--cluster-dir", type=Path, help="keep the sample cluster here and reuse it in later runs")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of floor, dump and verify")
    parser.add_argument("--compression", default="gzip")
    args = parser.parse_args()

    print(f"machine: {machine_line()}", flush=True)
    with sample_cluster(args.size_mb, cluster_dir=args.cluster_dir) as cluster, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, **cluster.env("loyalty"), "PGPASSWORD": cluster.password}
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        common = {"port": cluster.port, "bin_dir": cluster.bin_dir, "postmaster": postmaster}
        subprocess.run([f"{cluster.bin_dir}/pg_dump", "-Fc", "-Z0"], env=env, stdout=subprocess.DEVNULL, check=True)
        for round_no in range(args.rounds):
            floor = _run(FLOOR, {**common, "path": str(work / "floor.dump")}, env)
            (work / "floor.dump").unlink()
            backups = work / f"backups{round_no}"
            dump = _run(CHILD, {**common, "step": "dump", "backup_dir": str(backups),
                                "request": {"compression": args.compression}}, env)
            verify = _run(CHILD, {**common, "step": "verify", "path": dump["path"]}, env)
            print(f"\nround {round_no + 1}: {machine_line()}")
            _print_cpu("floor: pg_dump -Fc -Z0 > file", floor)
            _print_cpu(f"dump (take_backup, {args.compression}; timings {json.dumps({k: round(v, 2) for k, v in dump['timings'].items()})})", dump)
            _print_cpu("verify (inspect_archive of the stored file, pg_restore --list)", verify)
            print(f"\narchive {dump['raw_bytes'] / 1e6:.0f} MB -> {dump['written_bytes'] / 1e6:.0f} MB; "
                  f"dump/floor wall {dump['wall_s'] / floor['wall_s']:.2f}, (dump+verify)/floor wall "
                  f"{(dump['wall_s'] + verify['wall_s']) / floor['wall_s']:.2f}")
            for path in backups.iterdir():
                path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

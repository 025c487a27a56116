"""What WAL archiving costs the server, as pgbench TPS, measured so that the answer holds on a shared machine
(never in CI; issue target: TPS with archiving on >= 0.9x off).

``benchmarks/pitr.py`` compares whole pgbench runs, each after a server restart. On a 2-vCPU VM the median of
five alternating 30-s runs moved by about 15 % between two configurations doing the same work, so it could not
tell a 7 % cost from none. Here one pgbench run goes on for the whole measurement and nothing restarts:

- The server runs with ``archive_mode=on`` throughout; ``archive_command`` and ``wal_compression`` are switched
  with ``ALTER SYSTEM`` and a reload, window by window. The baseline is the server as before archiving
  (``wal_compression`` off) with ``archive_command`` ``true``: the archiver marks each segment done and nothing
  is stored. What ``true`` costs is printed beside the result (the archiver's children's CPU per window); it is
  the difference between this baseline and ``archive_mode=off``.
- Windows alternate baseline, treatment, baseline, next treatment, ...; each treatment window's TPS is divided
  by the mean of the two baseline windows around it, so a drift of the machine over minutes cancels. The first
  ``--settle`` seconds of each window are left out (a segment still being archived under the previous setting).
- Treatments: the engine with the defaults (barman-cloud, ``ArchiveOptions()``: zstd 1, nice 10, the server's
  ``wal_compression`` lz4) and **a control that is the baseline again**: its ratio shows what this method reads
  when there is nothing to read. ``--server-alone`` adds ``wal_compression`` lz4 with ``archive_command true``;
  ``--engine-compare`` adds pgBackRest's ``archive-push`` (as in pitr.py).
- Each treatment's result is the median of its ratios with a 95 % bootstrap interval. The verdict against 0.9x
  is only given when the control's interval holds 1.0 (else the run says it cannot be trusted), and says
  "cannot tell" when the interval holds 0.9.
- Beside it, archive_command's CPU as a share of the server's own CPU in the same windows: on a CPU-bound server
  TPS x 1 / (1 + share), a figure to compare with the measured one.

The server runs with fsync and synchronous_commit off (pgbench commits as fast as the CPU allows: the worst case
for archiving's share). **The server has its own CPUs** (the first half; the postmaster and every process it
forks, ``archive_command`` included, are pinned there), and pgbench (4 clients) and moto run on the others, as
clients and S3 are on other machines in production. Unpinned on a 2-vCPU VM, pgbench's TPS jumped between two
levels (about 6,500 and 10,000) every few seconds as the scheduler moved backends and pgbench threads between
the two CPUs; pinned, one second's TPS varied by about 7 % and 10-s windows by 3-4 %. ``archive_command`` then
takes its CPU from the server's backends: the CPU-bound case, where archiving costs the most. ``--no-pin``
measures without it.

Run under the machine-wide lock:
  flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/pitr_archive_tps.py --cycles 20 --window-seconds 10
A smoke run (about 2 minutes):  ... benchmarks/pitr_archive_tps.py --cycles 2 --window-seconds 6 --settle 2
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from _common import cpu_times, machine_line, moto_server, stolen_share  # noqa: F401  (sets sys.path)
from pitr import BIN_ENV, Bench, Pgbench, PgBackRest, proc_cpu, say, server_cpu, table  # noqa: E402

from devstack.postgres_cluster import server_engine_dir  # noqa: E402
from loyalty_ops.lib.pitr.engine import archive_command  # noqa: E402
from loyalty_ops.lib.pitr.options import ArchiveOptions  # noqa: E402
from psycopg import sql  # noqa: E402

BASELINE = "baseline: archive_command true, wal_compression off"
CONTROL = "control: the baseline again"
TARGET = 0.9


@dataclass(frozen=True)
class Setting:
    label: str
    archive_command: str
    wal_compression: str


@dataclass
class Window:
    setting: Setting
    start: float  # epoch seconds, when the reload was sent
    end: float
    archive_cpu_s: float
    server_cpu_s: float
    ready_at_end: int
    tps: float = 0.0
    samples: list[float] = field(default_factory=list)


def median_interval(values: list[float], resamples: int = 5000, seed: int = 15) -> tuple[float, float, float]:
    """The median and its 95 % bootstrap interval (percentiles of the medians of resamples)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return statistics.median(values), medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def paired_ratios(windows: list[Window], label: str) -> list[float]:
    """Each window of ``label`` against the mean of the baseline windows just before and after it."""
    ratios = []
    for i, window in enumerate(windows):
        if window.setting.label != label or i == 0 or i + 1 >= len(windows):
            continue
        before, after = windows[i - 1], windows[i + 1]
        assert before.setting.label == after.setting.label == BASELINE, "treatments are always between baselines"
        reference = (before.tps + after.tps) / 2
        if reference > 0 and window.tps > 0:
            ratios.append(window.tps / reference)
    return ratios


def verdict(ratios: tuple[float, float, float], control: tuple[float, float, float]) -> str:
    """Against the target, only when the control reads nothing where there is nothing to read."""
    _, c_low, c_high = control
    if not c_low <= 1.0 <= c_high:
        return (f"the control's interval ({c_low:.3f}-{c_high:.3f}) does not hold 1.0: this run cannot be trusted "
                "(run it again, longer)")
    median, low, high = ratios
    if low >= TARGET:
        return f"target >= {TARGET}x met (the whole interval is above it)"
    if high < TARGET:
        return f"target >= {TARGET}x NOT met (the whole interval is below it)"
    return f"cannot tell: the interval holds {TARGET}x (run it longer)"


class Switcher:
    """Applies a setting to the running server: ALTER SYSTEM and a reload, waited for."""

    def __init__(self, bench: Bench):
        self.bench = bench
        self.conn = bench.cluster.connect("postgres")

    def apply(self, setting: Setting) -> None:
        for name, value in (("archive_command", setting.archive_command), ("wal_compression", setting.wal_compression)):
            self.conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        self.conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # this session sees the reload once it has been processed
            (command,) = self.conn.execute("SELECT current_setting('archive_command')").fetchone()
            if command == setting.archive_command:
                return
            time.sleep(0.02)
        raise RuntimeError(f"the server did not take archive_command {setting.archive_command!r} within 5 s")

    def archiver_pid(self) -> int:
        (pid,) = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'").fetchone()
        return int(pid)

    def ready(self) -> int:
        (ready,) = self.conn.execute(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'").fetchone()
        return int(ready)


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (what it forks or starts later inherits it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass


def pin_server(data_dir: Path, cpus: set[int]) -> None:
    """The postmaster and its children (the archiver among them) onto ``cpus``; backends forked later follow."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    pin(postmaster, cpus)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pin(int(entry), cpus)
            except (OSError, ValueError):
                pass


def run_windows(bench: Bench, sequence: list[Setting], seconds: float, settle: float,
                client_cpus: Optional[set[int]]) -> tuple[list[Window], float]:
    """The windows, and the share of the machine's CPU time stolen by the hypervisor meanwhile."""
    times_before = cpu_times()
    switcher = Switcher(bench)
    archiver = switcher.archiver_pid()
    prefix = ("taskset", "-c", ",".join(map(str, sorted(client_cpus)))) if client_cpus else ()
    load = Pgbench(bench.cluster, len(sequence) * seconds + 10, prefix=prefix)
    time.sleep(3)  # pgbench connected and running
    windows: list[Window] = []
    for number, setting in enumerate(sequence, 1):
        cpu_before, server_before = proc_cpu(archiver, children=True), server_cpu(bench.cluster.data_dir)
        start = time.time()
        switcher.apply(setting)
        time.sleep(max(0.0, start + seconds - time.time()))
        end = time.time()
        windows.append(Window(setting, start, end, proc_cpu(archiver, children=True) - cpu_before,
                              server_cpu(bench.cluster.data_dir) - server_before, switcher.ready()))
        if number % 10 == 0:
            say(f"window {number} of {len(sequence)}")
    load.wait()
    for window in windows:  # a progress line at time t covers the second before it
        window.samples = [tps for at, tps in load.samples if at - 1 >= window.start + settle and at <= window.end + 0.05]
        window.tps = statistics.mean(window.samples) if window.samples else 0.0
    switcher.conn.close()
    return windows, stolen_share(times_before, cpu_times())


def report(windows: list[Window], treatments: list[Setting], seconds: float, settle: float, placement: str,
           stolen: float) -> None:
    base = [w for w in windows if w.setting.label == BASELINE]
    print("\n== Archiving's cost as pgbench TPS: one pgbench run, settings switched by reload in alternating windows ==")
    print(f"machine: {machine_line()}; {placement}; CPU time stolen by the hypervisor during the run: {stolen:.1%}")
    print(f"{len(windows)} windows of {seconds:.0f} s ({settle:.0f} s left out after each switch); baseline "
          f"{statistics.median(w.tps for w in base):.0f} tps (median of {len(base)} windows, "
          f"{min(w.tps for w in base):.0f}-{max(w.tps for w in base):.0f})")
    base_share = sum(w.archive_cpu_s for w in base) / max(sum(w.server_cpu_s for w in base), 1e-9)
    print(f"archive_command 'true' (the baseline's only difference from archive_mode=off): {base_share:.2%} of the "
          "server's own CPU")
    control = median_interval(paired_ratios(windows, CONTROL))
    rows = []
    for setting in treatments:
        ratios = paired_ratios(windows, setting.label)
        median, low, high = median_interval(ratios)
        mine = [w for w in windows if w.setting.label == setting.label]
        share = sum(w.archive_cpu_s for w in mine) / max(sum(w.server_cpu_s for w in mine), 1e-9)
        rows.append([setting.label, str(len(ratios)), f"{median:.3f}x", f"{low:.3f}-{high:.3f}",
                     f"{statistics.mean(ratios):.3f}x", f"{share:.1%}", f"x{1 / (1 + share):.3f}",
                     str(max(w.ready_at_end for w in mine)),
                     verdict((median, low, high), control) if setting.archive_command != "true" else "-"])
    print(table(["treatment / baseline around it", "pairs", "median", "95% interval", "mean",
                 "archive CPU / server CPU", "CPU-bound TPS", "max waiting", "verdict"], rows))
    print(f"(target: archiving on >= {TARGET}x off. 'CPU-bound TPS' = 1 / (1 + archive CPU share): what the CPU the "
          "engine used would cost a server that is CPU-bound; 'max waiting' = segments not yet archived at a window's end)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20, help="how many times every treatment runs (each between baselines)")
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds left out at the start of each window")
    parser.add_argument("--archive-timeout", type=int, default=60)
    parser.add_argument("--server-alone", action="store_true", help="also wal_compression lz4 with archive_command true")
    parser.add_argument("--engine-compare", action="store_true", help="also pgBackRest's archive-push (Debian's pgbackrest)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave the server, pgbench and moto where "
                        "the scheduler puts them")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) < 2:
        parser.error("pinning the server apart from pgbench needs 2 CPUs; run with --no-pin")
    server_cpus, client_cpus = (set(cpus[: len(cpus) // 2]), set(cpus[len(cpus) // 2:])) if args.pin else (None, None)
    placement = (f"the server on CPU {','.join(map(str, sorted(server_cpus)))}, pgbench and moto on CPU "
                 f"{','.join(map(str, sorted(client_cpus)))}" if args.pin else "not pinned")
    if args.window_seconds - args.settle < 3:
        parser.error("--window-seconds must leave at least 3 s after --settle")
    if args.engine_compare and not shutil.which("pgbackrest", path=BIN_ENV["PATH"]):
        parser.error("--engine-compare needs pgBackRest on this machine: apt-get install -y pgbackrest")
    say(f"machine: {machine_line()}")
    work = Path(tempfile.mkdtemp(prefix="loyalty-bench-archive-tps-"))
    os.chmod(work, 0o755)
    defaults = ArchiveOptions()
    with moto_server() as (endpoint, moto_pid):
        bench = Bench(args, work, endpoint, moto_pid)
        cluster = bench.cluster
        # archive_mode on for the whole run; archive_command and wal_compression come from ALTER SYSTEM (a setting
        # on the command line would win over it)
        cluster.settings = (*bench.base_settings, "wal_level=replica", "archive_mode=on",
                            f"archive_timeout={args.archive_timeout}")
        cluster.start()
        if args.pin:
            pin_server(cluster.data_dir, server_cpus)
            pin(moto_pid, client_cpus)
        try:
            cluster.create_database("bench")
            subprocess.run([f"{cluster.bin_dir}/pgbench", "-i", "-s", "20", "-q", "bench"],
                           env={**BIN_ENV, **cluster.env("bench")}, check=True, capture_output=True)
            treatments = [Setting(f"barman-cloud, the defaults ({defaults.describe()})",
                                  archive_command(server_engine_dir(), bench.location, bench.access, defaults),
                                  defaults.server_wal_compression),
                          Setting(CONTROL, "true", "off")]
            if args.server_alone:
                treatments.append(Setting(f"wal_compression {defaults.server_wal_compression}, archive_command true",
                                          "true", defaults.server_wal_compression))
            if args.engine_compare:
                treatments.append(Setting("pgBackRest archive-push (zst 1, posix repository), the same settings",
                                          PgBackRest(cluster, work).archive_command(defaults), defaults.server_wal_compression))
            baseline = Setting(BASELINE, "true", "off")
            sequence: list[Setting] = []
            for cycle in range(args.cycles):
                order = treatments[cycle % len(treatments):] + treatments[:cycle % len(treatments)]  # no fixed neighbours
                for setting in order:
                    sequence += [baseline, setting]
            sequence.append(baseline)
            say(f"{len(sequence)} windows of {args.window_seconds:.0f} s: about "
                f"{len(sequence) * args.window_seconds / 60:.0f} min of pgbench")
            say(placement)
            windows, stolen = run_windows(bench, sequence, args.window_seconds, args.settle, client_cpus)
            report(windows, treatments, args.window_seconds, args.settle, placement, stolen)
        finally:
            cluster.destroy()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""PITR benchmark (never in CI): barman-cloud against the logical tools on one sample database, in one run.

1. Archiving's cost on the server: pgbench TPS with archiving off, on with the old defaults (gzip level 6, full
   CPU priority, wal_compression off), on with the new defaults (ArchiveOptions()), each lever alone and the
   server's wal_compression without archiving (--no-levers skips those); for each, the server's CPU and WAL per
   transaction, the CPU the archive_command processes used (the archiver's reaped children) and moto's.
   --engine-compare adds, in every round, the same server archiving through pgBackRest's archive-push (the
   alternative engine; a posix repository on local disk), to measure what the other engine costs.
   --server-alone adds two controls to every round: wal_compression without archiving, and archive_command 'true'.
2. CPU per WAL segment (user+sys of the engine process, a figure that holds on a busy machine) on real segments
   written by the pgbench runs without and with wal_compression: the process start alone (--test), no
   compression, gzip 6 and 1, zstd 1 and 3, lz4, snappy; with the size stored in the bucket (and pgBackRest's
   archive-push at zst 1 with --engine-compare).
3. Base backup (barman-cloud-backup) with the old and the new options (--base-backups adds others), each with
   its CPU split (the engine's processes, moto's) vs the floor of a logical dump (pg_dump -Fc -Z0 to a pipe).
4. Achieved RPO under pgbench load with archive_timeout (new defaults): a probe commits a row every second; for
   each commit, the time until the WAL segment holding it is an object in the bucket (target: all within 60 s).
5. PITR restore to a point LOAD_SECONDS after the base backup (pgbench writing in between) vs the logical
   restore_job of the same data, the sample database and pgbench's: restore_job in new_server mode from S3
   alone (the nightly backup and its offsite copy taken at the target; download, checksum, decompress, globals,
   pg_restore -j2, row counts against the manifest) into a new server without archiving, like the PITR
   restore's new instance (target <= 0.5x); and the bare floor of a logical restore (pg_restore -j2 of a local
   pg_dump -Fc file, nothing checked). In RESTORE_ROUNDS alternating rounds with the medians compared; and
   the bare logical restore once on the live server, archiving its own WAL meanwhile. The source runs with
   fsync and synchronous_commit off (a throwaway's settings, given on its command line, so not in the base
   backup); --durable-load turns both on from the base backups on, so the load commits as production's does;
   --source-settings sets more with ALTER SYSTEM, so they are in the base backup as production's are.

Run under the machine-wide lock:  flock /tmp/loyalty-bench.lock .venv/bin/python benchmarks/pitr.py --size-mb 1400
A smoke run:  ... benchmarks/pitr.py --size-mb 150 --load-seconds 20 --tps-seconds 15
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from _common import REPO, machine_line, moto_server, s3_client  # noqa: F401  (sets sys.path)

from devstack.postgres_cluster import LocalPostgres, archiving_settings, free_port, server_engine_dir  # noqa: E402
from devstack.s3_endpoint import LOCAL_CREDENTIALS  # noqa: E402
from devstack.sample_data import create_sample_schema  # noqa: E402
from loyalty_ops.lib.pitr.archive import wal_file_name  # noqa: E402
from loyalty_ops.lib.pitr.engine import BarmanCloud, S3Access, archive_argv, archive_command, restore_command  # noqa: E402
from loyalty_ops.lib.pitr.instance import ScratchInstance, first_event, log_events  # noqa: E402
from loyalty_ops.lib.pitr.location import PitrLocation  # noqa: E402
from loyalty_ops.lib.pitr.options import (LEGACY_ARCHIVE, LEGACY_BACKUP, ArchiveOptions, BackupOptions,  # noqa: E402
                                          format_instance_settings, parse_instance_settings)
from loyalty_ops.lib.pitr.recover import recover  # noqa: E402
from loyalty_ops.lib.pitr.target import RecoveryTarget  # noqa: E402

import dagster as dg  # noqa: E402
from psycopg import sql  # noqa: E402
from dagster_aws.s3 import S3Resource  # noqa: E402
from loyalty_ops.defs.backups.assets import database_backup  # noqa: E402
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS  # noqa: E402
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy  # noqa: E402
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget  # noqa: E402
from loyalty_ops.defs.restore.resources import RestoreSettings  # noqa: E402

PROGRESS = re.compile(r"progress: ([0-9.]+) s, ([0-9.]+) tps")
BIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
TICK = os.sysconf("SC_CLK_TCK")
BUCKET = "bench-pitr"
PGBACKREST_LABEL = "on, pgBackRest archive-push (zst 1, posix repository)"
SERVER_ALONE_LABEL = "off, wal_compression {} (the server alone)"
# archive_mode on, the new defaults' server settings and an archive_command that stores nothing: the server's side of
# archiving without any engine (a measurement on a throwaway cluster only).
NULL_ARCHIVE_LABEL = "on, archive_command true (no engine)"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds (user+sys) of a process, or of its waited-for children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ((cutime + cstime) if children else (utime + stime)) / TICK


def server_cpu(data_dir: Path) -> float:
    """CPU seconds of the PostgreSQL server itself: the postmaster with its reaped backends, and its live children
    (checkpointer, walwriter, the archiver's own work; not archive_command's processes, counted apart)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = proc_cpu(postmaster) + proc_cpu(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / TICK
    return total


class Pgbench:
    def __init__(self, cluster: LocalPostgres, seconds: float, clients: int = 4, prefix: tuple[str, ...] = ()):
        """``prefix``: what pgbench runs under (``taskset -c 1``)."""
        self.samples: list[tuple[float, float]] = []
        self.proc = subprocess.Popen(
            [*prefix, f"{cluster.bin_dir}/pgbench", "-c", str(clients), "-j", "2", "-T", str(int(seconds)), "-P", "1",
             "--progress-timestamp", "-n", "bench"],
            env={**BIN_ENV, **cluster.env("bench")}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            found = PROGRESS.search(line)
            if found:
                self.samples.append((float(found.group(1)), float(found.group(2))))

    @property
    def transactions(self) -> float:
        """Transactions committed in the run (from the per-second progress lines)."""
        return sum(tps for _, tps in self.samples)  # one line per second: the sum of the rates is the count

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


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(headers), *(line(r) for r in rows)])


class PgBackRest:
    """pgBackRest's archive-push (--engine-compare), the alternative to barman-cloud: one C
    process per segment where barman-cloud-wal-archive starts Python and boto3. A stanza of this cluster with a
    posix repository in the work directory (pgBackRest's TLS client does not take moto's ad-hoc TLS endpoint, so
    the segment goes to local disk, fsynced, instead of over HTTP), zst level 1 like ours."""

    def __init__(self, cluster: LocalPostgres, work: Path):
        self.cluster = cluster
        self.conf = work / "pgbackrest.conf"
        repo, lock = work / "pgbackrest-repo", work / "pgbackrest-lock"
        for directory in (repo, lock):
            directory.mkdir()
            if os.geteuid() == 0:
                shutil.chown(directory, cluster.user)
        self.conf.write_text(
            f"[global]\nrepo1-type=posix\nrepo1-path={repo}\nlock-path={lock}\nlog-level-file=off\n"
            f"log-level-console=warn\ncompress-type=zst\ncompress-level=1\n\n[loyalty]\npg1-path={cluster.data_dir}\n"
            f"pg1-port={cluster.port}\npg1-socket-path={cluster.socket_dir}\n")
        self.conf.chmod(0o644)
        subprocess.run(self.cluster._as_os_user() + self.argv("stanza-create"), env=BIN_ENV, check=True,
                       capture_output=True)

    def argv(self, *command: str) -> list[str]:
        return ["pgbackrest", f"--config={self.conf}", "--stanza=loyalty", *command]

    def archive_command(self, options: ArchiveOptions) -> str:
        return " ".join([*options.priority_prefix(), *(shlex.quote(a) for a in self.argv("archive-push")), "%p"])


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, endpoint: str, moto_pid: int):
        self.args, self.work, self.moto_pid = args, work, moto_pid
        self.s3 = s3_client(endpoint)
        self.s3.create_bucket(Bucket=BUCKET)
        self.location = PitrLocation.of(BUCKET, "pitr/", "loyalty")
        self.access = S3Access(endpoint_url=endpoint, region=LOCAL_CREDENTIALS["AWS_REGION"],
                               credentials={k: v for k, v in LOCAL_CREDENTIALS.items() if k != "AWS_REGION"})
        self.cluster = LocalPostgres(password=os.urandom(8).hex(), base_dir=work / "pg", environment=self.access.env(),
                                     settings=("full_page_writes=on", "max_wal_size=4GB"))
        self.base_settings = tuple(self.cluster.settings)
        self.segment_sets: list[tuple[str, list[Path]]] = []
        self.pgbackrest: Optional[PgBackRest] = None

    # -- the server, restarted with or without archiving --------------------------------------------------
    def restart(self, options: Optional[ArchiveOptions], server: tuple[str, ...] = (), command: Optional[str] = None) -> None:
        """The server with archiving off (no options), or on through barman-cloud, or through ``command``."""
        self.cluster.stop()
        extra = () if options is None else archiving_settings(
            command or archive_command(server_engine_dir(), self.location, self.access, options), self.args.archive_timeout,
            options.server_wal_compression)
        self.cluster.settings = (*self.base_settings, *extra, *server)
        self.cluster.start()

    def archiver(self) -> tuple[Optional[int], int]:
        """(pid of the archiver process, segments archived so far)."""
        with self.cluster.connect("postgres") as conn:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'").fetchone()
            (archived,) = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()
        return (row[0] if row else None), int(archived)

    def wal_lsn(self) -> int:
        with self.cluster.connect("postgres") as conn:
            (lsn,) = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        return int(lsn)

    def ready_segments(self) -> int:
        with self.cluster.connect("postgres") as conn:
            (ready,) = conn.execute("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'").fetchone()
        return int(ready)

    def drain(self, timeout_s: float = 180) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.cluster.connect("postgres") as conn:
            while time.monotonic() < deadline:
                (ready,) = conn.execute("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'").fetchone()
                if ready == 0:
                    return True
                time.sleep(0.5)
        return False

    # -- 1. TPS with archiving off / on ----------------------------------------------------------------------
    def tps_phases(self) -> list[dict]:
        old, new = LEGACY_ARCHIVE, ArchiveOptions()
        phases: list[tuple[str, Optional[ArchiveOptions], tuple[str, ...]]] = [
            ("off", None, ()),
            (f"on, old defaults ({old.describe()})", old, ()),
            (f"on, new defaults ({new.describe()})", new, ()),
        ]
        if self.args.levers:
            alone = [ArchiveOptions(new.compression, new.level, old.nice, old.server_wal_compression),
                     ArchiveOptions(old.compression, old.level, new.nice, old.server_wal_compression),
                     ArchiveOptions(old.compression, old.level, old.nice, new.server_wal_compression)]
            phases += [(f"on, one lever alone ({options.describe()})", options, ()) for options in alone]
            phases += [(f"off, wal_compression {new.server_wal_compression} (the server alone)", None,
                        (f"wal_compression={new.server_wal_compression}",))]
        for number in range(2, self.args.tps_rounds + 1):  # off and the new defaults again, alternating: medians
            phases += [(f"off (round {number})", None, ()), (f"on, new defaults (round {number})", new, ())]
        if self.args.server_alone:  # the controls, in every round after off: the server setting alone, archiving with no engine
            alone_label = SERVER_ALONE_LABEL.format(new.server_wal_compression)
            offs = [i for i, (label, _, _) in enumerate(phases) if label.split(" (")[0] == "off"]
            for count, position in enumerate(offs):
                phases[position + 1 + 2 * count:position + 1 + 2 * count] = [
                    (f"{alone_label} (round {count + 1})", None, (f"wal_compression={new.server_wal_compression}",)),
                    (f"{NULL_ARCHIVE_LABEL} (round {count + 1})", new, ())]
        if self.pgbackrest:  # the other engine with the same server settings and priority, in every round
            rounds = [i + 1 for i, (label, _, _) in enumerate(phases) if label.startswith("on, new defaults")]
            for count, position in enumerate(rounds):
                phases.insert(position + count, (f"{PGBACKREST_LABEL} (round {count + 1})", new, ()))
        # real segments of the server as it is (wal_compression off) and with the new defaults, for the CPU table
        segment_phases = (phases[0][0], next(label for label, _, _ in phases if label.startswith("on, new defaults")))
        out = []
        for label, options, server in phases:
            command = self.pgbackrest.archive_command(options) if self.pgbackrest and label.startswith(PGBACKREST_LABEL) else None
            command = "true" if label.startswith(NULL_ARCHIVE_LABEL) else command
            self.restart(options, server, command)
            pid, archived_before = self.archiver()
            cpu_before = proc_cpu(pid, children=True) if pid else 0.0
            moto_before = proc_cpu(self.moto_pid)
            lsn_before = self.wal_lsn()
            server_before = server_cpu(self.cluster.data_dir)
            started = time.monotonic()
            bench = Pgbench(self.cluster, self.args.tps_seconds)
            tps = bench.wait()
            wal_bytes = self.wal_lsn() - lsn_before
            backlog = self.ready_segments()
            catch_up = time.monotonic()
            drained = self.drain() if options else True
            catch_up_s = time.monotonic() - catch_up
            elapsed = time.monotonic() - started
            server = server_cpu(self.cluster.data_dir) - server_before
            pid_after, archived_after = self.archiver()
            if label in segment_phases:
                self.segment_sets.append((label.split(" (")[0], self.real_segments(self.args.segments, f"set{len(self.segment_sets)}")))
            cpu = (proc_cpu(pid_after, children=True) - cpu_before) if pid and pid_after == pid else 0.0
            segments = archived_after - archived_before
            row = {"label": label, "tps": tps, "segments": segments, "archiver_cpu_s": cpu, "elapsed_s": elapsed,
                   "moto_cpu_s": proc_cpu(self.moto_pid) - moto_before, "drained": drained, "backlog": backlog,
                   "catch_up_s": catch_up_s, "wal_mb": wal_bytes / 1e6, "transactions": bench.transactions,
                   "server_cpu_s": server}
            out.append(row)
            say(f"pgbench archiving {label}: {tps:.0f} tps; {segments} segment(s) archived, archive_command CPU "
                f"{cpu:.2f} s ({cpu / max(segments, 1):.3f} s/segment), moto CPU {row['moto_cpu_s']:.2f} s; "
                f"{backlog} segment(s) waiting when pgbench stopped, archived {catch_up_s:.1f} s later"
                f"{'' if drained else ' (archiver had not caught up)'} ({os.getloadavg()[0]:.2f} load)")
        return out

    # -- 2. CPU per segment of each compression, on real segments ---------------------------------------------
    def real_segments(self, count: int, name: str) -> list[Path]:
        """Copies of the newest complete WAL segments the pgbench load wrote (never the one being written)."""
        with self.cluster.connect("postgres") as conn:
            (current,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        wal_dir = self.cluster.data_dir / "pg_wal"
        names = sorted(p.name for p in wal_dir.iterdir() if re.fullmatch(r"[0-9A-F]{24}", p.name) and p.name < current)
        target = self.work / "segments" / name
        target.mkdir(parents=True, exist_ok=True)
        copies = []
        for name in names[-count:]:
            shutil.copyfile(wal_dir / name, target / name)
            copies.append(target / name)
        return copies

    def run_measured(self, argv: list[str]) -> tuple[float, float]:
        """(user+sys CPU s, wall s) of one engine process."""
        started = time.monotonic()
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(argv, env={**BIN_ENV, **self.access.env()}, stdout=output, stderr=output)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                output.seek(0)
                raise RuntimeError(f"{Path(argv[0]).name} failed ({proc.returncode}): {output.read().decode()[-500:]}")
        return usage.ru_utime + usage.ru_stime, time.monotonic() - started

    def archive_cpu(self, segments: list[Path], regime: str) -> list[dict]:
        variants: list[tuple[str, Optional[ArchiveOptions]]] = [
            ("process start only (--test)", None),
            ("none", ArchiveOptions("none", None, 0)),
            ("gzip 6 (old default)", LEGACY_ARCHIVE),
            ("gzip 1", ArchiveOptions("gzip", 1, 0)),
            ("zstd 1", ArchiveOptions("zstd", 1, 0)),
            ("zstd 3", ArchiveOptions("zstd", 3, 0)),
            ("lz4 0", ArchiveOptions("lz4", 0, 0)),
            ("snappy", ArchiveOptions("snappy", None, 0)),
        ]
        engine_dir = server_engine_dir()
        raw = sum(p.stat().st_size for p in segments) / len(segments)
        rows = []
        for label, options in variants:
            location = PitrLocation.of(BUCKET, f"cpu/{segments[0].parent.name}/{len(rows)}", "loyalty")
            cpu, wall = [], []
            moto_before = proc_cpu(self.moto_pid)
            try:
                for segment in segments:
                    if options is None:
                        argv = [f"{engine_dir}/barman-cloud-wal-archive", *self.access.endpoint_args(), "--test",
                                location.url, location.server_name, str(segment)]
                    else:
                        argv = archive_argv(engine_dir, location, self.access, options, str(segment))
                    c, w = self.run_measured(argv)
                    cpu.append(c)
                    wall.append(w)
            except RuntimeError as exc:
                say(f"archive CPU, {label}: not measured: {exc}")
                continue
            moto = (proc_cpu(self.moto_pid) - moto_before) / len(segments)
            stored = [int(o["Size"]) for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=location.wal_prefix) for o in page.get("Contents", [])]
            size = statistics.mean(stored) if stored else 0.0
            row = {"label": f"{label}, WAL of '{regime}'", "cpu_s": statistics.mean(cpu), "cpu_min_s": min(cpu), "wall_s": statistics.mean(wall),
                   "stored_mb": size / 1e6, "ratio": raw / size if size else None, "moto_cpu_s": moto}
            rows.append(row)
            say(f"archive CPU, {row['label']}: {row['cpu_s']:.3f} s/segment (min {row['cpu_min_s']:.3f}), wall {row['wall_s']:.2f} s, "
                f"stored {row['stored_mb']:.2f} MB" + (f" ({row['ratio']:.1f}x smaller)" if row["ratio"] else "")
                + f", moto {moto:.3f} s")
        return rows

    def pgbackrest_cpu(self, segments: list[Path], regime: str) -> list[dict]:
        """pgBackRest's archive-push of the same real segments (--engine-compare), as the server's OS user."""
        assert self.pgbackrest is not None
        repo = self.work / "pgbackrest-repo"
        before = set(repo.rglob("*.zst"))
        cpu, wall = [], []
        try:
            for segment in segments:
                c, w = self.run_measured(self.cluster._as_os_user() + self.pgbackrest.argv("archive-push", str(segment)))
                cpu.append(c)
                wall.append(w)
        except RuntimeError as exc:
            say(f"archive CPU, pgBackRest: not measured: {exc}")
            return []
        stored = [p.stat().st_size for p in repo.rglob("*.zst") if p not in before]
        size = statistics.mean(stored) if stored else 0.0
        raw = sum(p.stat().st_size for p in segments) / len(segments)
        row = {"label": f"pgBackRest archive-push zst 1 (posix repository), WAL of '{regime}'", "cpu_s": statistics.mean(cpu),
               "cpu_min_s": min(cpu), "wall_s": statistics.mean(wall), "stored_mb": size / 1e6,
               "ratio": raw / size if size else None, "moto_cpu_s": 0.0}
        say(f"archive CPU, {row['label']}: {row['cpu_s']:.3f} s/segment (min {row['cpu_min_s']:.3f}), wall {row['wall_s']:.2f} s, "
            f"stored {row['stored_mb']:.2f} MB")
        return [row]

    # -- 3. base backups with their CPU split ----------------------------------------------------------------
    def base_backup(self, engine: BarmanCloud, label: str, options: BackupOptions) -> dict:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        moto_before = proc_cpu(self.moto_pid)
        started = time.monotonic()
        backup_id, _ = engine.backup(self.cluster.spec("postgres").libpq_env(), options=options)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        engine_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        moto_cpu = proc_cpu(self.moto_pid) - moto_before
        info = next(b for b in engine.list_backups() if b.backup_id == backup_id)
        stored = sum(int(o["Size"]) for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{self.location.base_prefix}{backup_id}/") for o in page.get("Contents", []))
        row = {"label": label, "backup_id": backup_id, "wall_s": wall, "engine_cpu_s": engine_cpu, "moto_cpu_s": moto_cpu,
               "cluster_mb": info.cluster_size / 1e6, "stored_mb": stored / 1e6}
        say(f"base backup {label}: {wall:.1f} s, engine CPU {engine_cpu:.1f} s, moto CPU {moto_cpu:.1f} s, cluster "
            f"{row['cluster_mb']:.0f} MB -> {row['stored_mb']:.0f} MB in the bucket ({os.getloadavg()[0]:.2f} load)")
        return row


def backup_variants(spec: str) -> list[tuple[str, BackupOptions]]:
    """'legacy,new,none,lz4:1' -> labelled options (COMPRESSION[:JOBS])."""
    out = []
    for token in filter(None, (t.strip() for t in spec.split(","))):
        if token == "legacy":
            out.append((f"old ({LEGACY_BACKUP.compression}, -J {LEGACY_BACKUP.jobs})", LEGACY_BACKUP))
        elif token == "new":
            new = BackupOptions()
            out.append((f"new ({new.compression}, -J {new.jobs})", new))
        else:
            name, _, jobs = token.partition(":")
            options = BackupOptions(name, int(jobs) if jobs else BackupOptions().jobs)
            out.append((f"{options.compression}, -J {options.jobs}", options))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1400)
    parser.add_argument("--load-seconds", type=float, default=300, help="pgbench load between base backup and target")
    parser.add_argument("--tps-seconds", type=float, default=60, help="each pgbench run of the archiving phases")
    parser.add_argument("--archive-timeout", type=int, default=60)
    parser.add_argument("--segments", type=int, default=4, help="real WAL segments per compression in the CPU table")
    parser.add_argument("--no-levers", dest="levers", action="store_false", help="skip the TPS runs of each lever alone")
    parser.add_argument("--base-backups", default="legacy,new", help="base backups to take: legacy, new, COMPRESSION[:JOBS]; "
                        "the PITR restore uses the last")
    parser.add_argument("--prefetch", type=int, default=16, help="restore_command's prefetch (segments fetched ahead)")
    parser.add_argument("--recovery-settings", default="", help="NAME=VALUE,... for the recovering instance (and the "
                        "logical restore's server) in every second round: what a setting does to each")
    parser.add_argument("--restore-rounds", type=int, default=3, help="PITR and logical restores, alternating (medians)")
    parser.add_argument("--tps-rounds", type=int, default=1, help="pgbench with archiving off and with the new defaults, "
                        "alternating, this many times (the TPS ratio by the medians: one run's TPS moves by 20-30%% on a shared machine)")
    parser.add_argument("--engine-compare", action="store_true", help="in every round also archive through pgBackRest's "
                        "archive-push (needs Debian's pgbackrest; a posix repository on local disk), and its CPU per segment")
    parser.add_argument("--server-alone", action="store_true", help="in every round also the controls: the server with "
                        "the new defaults' wal_compression and no archiving, and archiving on with archive_command 'true' "
                        "(no engine): what the server setting, the server's side of archiving and the engine each cost")
    parser.add_argument("--only-archiving", action="store_true", help="stop after the archiving phases (1 and 2)")
    parser.add_argument("--durable-load", action="store_true", help="from the base backups on, the source commits as "
                        "production does (fsync=on, synchronous_commit=on; the archiving phases keep them off)")
    parser.add_argument("--source-settings", default="", help="NAME=VALUE,... set on the source with ALTER SYSTEM before "
                        "the base backups (so they are in the backup, as production's are) and on the logical restore's server")
    args = parser.parse_args()
    if args.engine_compare and not shutil.which("pgbackrest", path=BIN_ENV["PATH"]):
        parser.error("--engine-compare needs pgBackRest on this machine: apt-get install -y pgbackrest")
    variants = backup_variants(args.base_backups)
    recovery_settings = parse_instance_settings(args.recovery_settings, "--recovery-settings")  # refused before anything runs
    say(f"machine: {machine_line()}")
    work = Path(tempfile.mkdtemp(prefix="loyalty-bench-pitr-"))
    os.chmod(work, 0o755)
    with moto_server() as (endpoint, moto_pid):
        bench = Bench(args, work, endpoint, moto_pid)
        cluster = bench.cluster
        cluster.start()
        try:
            cluster.create_database("bench")
            subprocess.run([f"{cluster.bin_dir}/pgbench", "-i", "-s", "20", "-q", "bench"], env={**BIN_ENV, **cluster.env("bench")},
                           check=True, capture_output=True)
            if args.engine_compare:
                bench.pgbackrest = PgBackRest(cluster, work)
            tps = bench.tps_phases()
            cpu_rows = []
            for regime, segments in bench.segment_sets:
                say(f"{len(segments)} real WAL segments from the pgbench run '{regime}' for the CPU table")
                cpu_rows += bench.archive_cpu(segments, regime) if segments else []
                cpu_rows += bench.pgbackrest_cpu(segments, regime) if segments and bench.pgbackrest else []
            print_archiving(tps, cpu_rows)
            if args.only_archiving:
                return

            bench.restart(ArchiveOptions())  # the new defaults from here on
            source_settings = parse_instance_settings(args.source_settings, "--source-settings")
            if source_settings:  # in postgresql.auto.conf, so in the base backup: the recovering instance "as backed up"
                with cluster.connect("postgres") as conn:
                    for name, value in source_settings.items():
                        conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            cluster.create_database("loyalty")
            started = time.monotonic()
            with cluster.connect("loyalty") as conn:
                create_sample_schema(conn, max(args.size_mb / 20.0, 0.05))
                conn.execute("CHECKPOINT")
                db_bytes = conn.execute("SELECT pg_database_size('loyalty')").fetchone()[0]
            say(f"sample database {db_bytes / 1e6:.0f} MB in {time.monotonic() - started:.0f} s")
            durable = ("fsync=on", "synchronous_commit=on") if args.durable_load else ()
            if durable or source_settings:
                bench.restart(ArchiveOptions(), durable)
                with cluster.connect("postgres") as conn:
                    shown = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                             for name in ("fsync", "synchronous_commit", "shared_buffers", *source_settings)}
                say(f"the source from here on: {', '.join(f'{k}={v}' for k, v in shown.items())}")
            env = {**BIN_ENV, **cluster.env("loyalty")}

            # 3. base backups vs pg_dump -Fc -Z0 floor
            started = time.monotonic()
            subprocess.run(f"{cluster.bin_dir}/pg_dump -Fc -Z0 loyalty > /dev/null", shell=True, env=env, check=True)  # -f /dev/null fails its fsync
            dump_floor = time.monotonic() - started
            say(f"pg_dump -Fc -Z0 of the {db_bytes / 1e6:.0f} MB database: {dump_floor:.1f} s")
            engine = BarmanCloud(bench.location, bench.access, str(Path(sys.executable).parent), base_env=BIN_ENV)
            backups = [bench.base_backup(engine, label, options) for label, options in variants]
            backup_id = backups[-1]["backup_id"]

            # 4 + 5. load for LOAD_SECONDS with the RPO probe, then a target at its end
            watcher = BucketWatcher(bench.s3, bench.location)
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
                # a commit after the target: recovery to a time stops at the first transaction past it (without
                # one it reaches the end of the WAL first, and PostgreSQL refuses to promote short of its target)
                conn.execute("INSERT INTO rpo_probe DEFAULT VALUES")
                (after_target,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()
                conn.execute("SELECT pg_switch_wal()")
            deadline = time.time() + 240
            while time.time() < deadline and not all(s in watcher.first_seen for s in [after_target, *(s for _, s in commits)]):
                time.sleep(0.5)
            watcher.stop.set()
            rpos = sorted(watcher.first_seen.get(s, float("inf")) - at for at, s in commits)
            p50, p99, worst = rpos[len(rpos) // 2], rpos[min(int(len(rpos) * 0.99), len(rpos) - 1)], rpos[-1]
            say(f"RPO under pgbench ({load_tps:.0f} tps) with archive_timeout={args.archive_timeout}: {len(rpos)} commits, "
                f"p50 {p50:.1f} s, p99 {p99:.1f} s, max {worst:.1f} s; within {args.archive_timeout} s: "
                f"{sum(r <= args.archive_timeout for r in rpos)}/{len(rpos)}")

            # 5. the PITR restore and the logical restore of the same data (the sample database and pgbench's: the
            # PITR restore brings back the whole cluster, both of them), in alternating rounds: one pair of numbers
            # moves with whatever else the machine did in those minutes, the medians of several do not.
            backup = next(b for b in engine.list_backups() if b.backup_id == backup_id)
            target = RecoveryTarget("time", time=target_time.astimezone(timezone.utc))
            dumps = {}
            for database in ("loyalty", "bench"):
                dumps[database] = work / f"{database}.dump"
                subprocess.run([f"{cluster.bin_dir}/pg_dump", "-Fc", "-f", str(dumps[database]), database],
                               env={**BIN_ENV, **cluster.env(database)}, check=True)
            nightly = NightlyBackups(bench, work)
            for database in ("loyalty", "bench"):
                nightly.take(cluster, database)
            # The logical restore goes into a new server of its own without archiving, like the PITR restore's
            # scratch instance (and, unlike it, with fsync off: the stricter baseline of the two).
            logical_base = (*bench.base_settings, *(f"{k}={v}" for k, v in source_settings.items()))
            fresh = LocalPostgres(password=os.urandom(8).hex(), base_dir=work / "logical", settings=logical_base)
            fresh.start()
            rounds: list[dict] = []
            try:
                for number in range(1, args.restore_rounds + 1):
                    # with --recovery-settings, every second round runs with them on the recovering instance
                    extra = recovery_settings if number % 2 == 0 else {}
                    if extra:
                        say(f"round {number} with {extra} on the recovering instance")
                    instance = ScratchInstance(work / "recovered", free_port(), cluster.bin_dir, settings=extra,
                                               environment={**BIN_ENV, **bench.access.env()})
                    os.sync()  # each restore starts with the machine's earlier writes on disk, not still being written back
                    try:
                        result = recover(engine, instance, backup, target,
                                         restore_command(server_engine_dir(), bench.location, bench.access,
                                                         str(instance.spool_dir), prefetch=args.prefetch),
                                         cluster.spec(), say)
                        say("recovery, from the recovering instance's log: " + recovery_timeline(instance.log_text()))
                    finally:
                        instance.remove()
                    wanted = (*logical_base, *(f"{k}={v}" for k, v in extra.items()))
                    if tuple(fresh.settings) != wanted:  # the logical restore's server gets the same settings
                        fresh.stop()
                        fresh.settings = wanted
                        fresh.start()
                    os.sync()
                    logical = {database: logical_restore(fresh, database, dump) for database, dump in dumps.items()}
                    os.sync()
                    job = {database: nightly.restore_job(fresh, database) for database in dumps}
                    rounds.append({"pitr_s": result.rto_s, "download_s": result.timings["download_s"],
                                   "replay_s": result.timings["recovery_s"], "promote_s": result.timings.get("promote_s", 0.0),
                                   "segments": result.segments_restored, "prefetched": result.prefetched_segments,
                                   "logical_s": sum(logical.values()), "logical_loyalty_s": logical["loyalty"],
                                   "job_s": sum(job.values()), "job_loyalty_s": job["loyalty"],
                                   "settings": format_instance_settings(extra) or "as backed up"})
                    say(f"round {number}: PITR restore {result.rto_s:.1f} s (download {result.timings['download_s']:.1f} s, "
                        f"replay of {result.segments_restored} segments {result.timings['recovery_s']:.1f} s, of which "
                        f"promotion {result.timings.get('promote_s', 0.0):.1f} s; {result.prefetched_segments} fetched ahead); "
                        f"restore_job {rounds[-1]['job_s']:.1f} s (the sample database {job['loyalty']:.1f} s) = "
                        f"{result.rto_s / rounds[-1]['job_s']:.2f}x; bare logical restore {rounds[-1]['logical_s']:.1f} s "
                        f"(the sample database {logical['loyalty']:.1f} s) = {result.rto_s / rounds[-1]['logical_s']:.2f}x")
            finally:
                fresh.destroy()
            # ... and once more on the live server as the first runs measured it (archiving its own WAL meanwhile)
            live = logical_restore(cluster, "loyalty", dumps["loyalty"]) + logical_restore(cluster, "bench", dumps["bench"])
            say(f"logical restore on the live, archiving server: {live:.1f} s")

            print_archiving(tps, cpu_rows)
            print(f"database {db_bytes / 1e6:.0f} MB, cluster {backups[-1]['cluster_mb']:.0f} MB")
            print(table(["base backup", "wall s", "vs pg_dump -Fc -Z0", "engine CPU s", "moto CPU s", "in bucket MB"],
                        [[b["label"], f"{b['wall_s']:.1f}", f"{b['wall_s'] / dump_floor:.2f}x ({dump_floor:.1f} s)",
                          f"{b['engine_cpu_s']:.1f}", f"{b['moto_cpu_s']:.1f}", f"{b['stored_mb']:.0f}"] for b in backups]))
            print(table(["round", "recovering instance", "PITR restore s", "download s", "replay s", "promote s",
                         "segments (ahead)", "restore_job s", "sample db alone s", "PITR / restore_job", "bare logical s",
                         "PITR / bare"],
                        [[str(i), r["settings"], f"{r['pitr_s']:.1f}", f"{r['download_s']:.1f}", f"{r['replay_s']:.1f}",
                          f"{r['promote_s']:.1f}", f"{r['segments']} ({r['prefetched']})", f"{r['job_s']:.1f}",
                          f"{r['job_loyalty_s']:.1f}", f"{r['pitr_s'] / r['job_s']:.2f}x", f"{r['logical_s']:.1f}",
                          f"{r['pitr_s'] / r['logical_s']:.2f}x"] for i, r in enumerate(rounds, 1)]))
            for settings in dict.fromkeys(r["settings"] for r in rounds):
                group = [r for r in rounds if r["settings"] == settings]
                pitr_s = statistics.median(r["pitr_s"] for r in group)
                job_s = statistics.median(r["job_s"] for r in group)
                logical_s = statistics.median(r["logical_s"] for r in group)
                print(f"PITR restore / logical restore_job, {settings} (medians of {len(group)} rounds):   {pitr_s:.1f} s / "
                      f"{job_s:.1f} s = {pitr_s / job_s:.2f}x (target <= 0.5x; both databases, restore_job new_server "
                      f"from S3 into a new server without archiving); against the bare pg_restore -j2 of a local file "
                      f"{logical_s:.1f} s: {pitr_s / logical_s:.2f}x")
            print(f"logical restore on the live, archiving server: {live:.1f} s")
            print(f"RPO under load (archive_timeout {args.archive_timeout} s, new defaults, {load_tps:.0f} tps): p50 {p50:.1f} s, "
                  f"p99 {p99:.1f} s, max {worst:.1f} s (target: max <= {args.archive_timeout} s)")
            print(f"machine: {machine_line()}  (at the end)")
            print(f"finished {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        finally:
            cluster.destroy()
            shutil.rmtree(work, ignore_errors=True)


def recovery_timeline(log_text: str) -> str:
    """Where the replay's time went, from the recovered instance's server log: seconds from the start
    to the first restored segment, the gaps between restored segments (each is the previous segment's replay
    plus the next restore_command), the end-of-recovery checkpoint and the server accepting connections."""
    events = log_events(log_text)
    if not events:
        return "(no timestamped lines)"

    start = events[0][0]
    restored = [at for at, message in events if message.startswith("restored log file")]
    if not restored:
        return "no segment restored"
    gaps = sorted((b - a for a, b in zip(restored, restored[1:])), reverse=True)
    out = (f"{restored[0] - start:.1f} s to the first segment; {len(restored)} segments, gaps between them "
           f"{sum(gaps):.1f} s in all (largest {', '.join(f'{g:.2f}' for g in gaps[:4])}; median "
           f"{statistics.median(gaps) if gaps else 0:.2f})")
    checkpoint = first_event(events, "checkpoint starting: end-of-recovery", restored[-1])
    checkpoint_done = first_event(events, "checkpoint complete", checkpoint) if checkpoint else None
    paused = first_event(events, "pausing at the end of recovery")  # the last segment is restored once more after the pause
    ready = first_event(events, "database system is ready to accept connections", paused or restored[-1])
    if checkpoint and checkpoint_done:
        out += f"; end-of-recovery checkpoint {checkpoint_done - checkpoint:.1f} s"
    if paused and ready:
        out += f"; paused at the target {paused - start:.1f} s after the start, promoted {ready - paused:.1f} s later"
    if ready:
        out += f"; ready {ready - start:.1f} s after the start"
    return out


class NightlyBackups:
    """The logical side as on-call runs it: the nightly backup job's backup of a database and its offsite copy
    (with their blocking checks), and ``restore_job`` in ``new_server`` mode from S3 alone (an empty backup
    directory, as on the day the database host is gone)."""

    PREFIX = "logical/"

    def __init__(self, bench: "Bench", work: Path):
        self.work = work
        self.offsite = OffsiteStorage(s3=S3Resource(endpoint_url=bench.access.endpoint_url, region_name=bench.access.region,
                                                    aws_access_key_id=bench.access.credentials["AWS_ACCESS_KEY_ID"],
                                                    aws_secret_access_key=bench.access.credentials["AWS_SECRET_ACCESS_KEY"]),
                                      bucket=BUCKET, prefix=self.PREFIX)
        self.instances: dict[str, dg.DagsterInstance] = {}  # one history per database (as one deployment has)

    @staticmethod
    def target(server: LocalPostgres, database: str) -> PostgresTarget:
        return PostgresTarget(host="127.0.0.1", port=server.port, user=server.user, password=server.password, database=database)

    def take(self, source: LocalPostgres, database: str) -> None:
        backup_dir = self.work / "nightly" / database
        backup_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.instances[database] = dg.DagsterInstance.ephemeral()
        result = dg.materialize([database_backup, offsite_backup_copy, *BACKUP_CHECKS], instance=self.instances[database], resources={
            "postgres": self.target(source, database), "backup_storage": BackupStorage(backup_dir=str(backup_dir)),
            "offsite": self.offsite, "restore_settings": RestoreSettings(drill_every_n_backups="0")})
        assert result.success, f"nightly backup of {database} failed"
        shutil.rmtree(backup_dir)  # the restore reads S3 alone
        say(f"nightly backup of {database} and its offsite copy: {time.monotonic() - started:.1f} s")

    def restore_job(self, server: LocalPostgres, database: str) -> float:
        """Seconds ``restore_job`` reports (its rto_s) for restoring ``database`` onto ``server`` (new_server mode,
        ``latest`` from S3); the restored database is dropped after."""
        from loyalty_ops.definitions import defs

        empty = self.work / "nightly" / "restore-box"
        empty.mkdir(parents=True, exist_ok=True)
        result = defs.resolve_job_def("restore_job").execute_in_process(
            run_config={"ops": {"restore_database": {"config": {"mode": "new_server"}}}}, instance=self.instances[database],
            resources={"postgres": self.target(server, database), "backup_storage": BackupStorage(backup_dir=str(empty)),
                       "offsite": self.offsite, "restore_settings": RestoreSettings(drill_every_n_backups="0")})
        assert result.success, f"restore_job of {database} failed"
        summary = result.output_for_node("restore_database")
        assert summary["downloaded_from_s3"] is True
        server.drop_database(database)
        return float(summary["rto_s"])


def logical_restore(server: LocalPostgres, database: str, dump: Path) -> float:
    """Seconds of ``pg_restore -j2`` (the core of restore_job) of ``dump`` into a new database on ``server``."""
    target = f"{database}_logical"
    server.create_database(target, drop_existing=True)
    started = time.monotonic()
    subprocess.run([f"{server.bin_dir}/pg_restore", "-j", "2", "--exit-on-error", "-d", target, str(dump)],
                   env={**BIN_ENV, **server.env(target)}, check=True)
    elapsed = time.monotonic() - started
    server.drop_database(target)
    return elapsed


def print_archiving(tps: list[dict], cpu_rows: list[dict]) -> None:
    print("\n== PITR benchmark ==")
    print(f"machine: {machine_line()}")
    off = tps[0]["tps"] or 1.0
    print(table(["pgbench (4 clients)", "TPS", "vs off", "server CPU ms/tx", "WAL MB", "WAL kB/tx", "segments",
                 "archive CPU s/segment", "archive CPU ms/tx", "cores", "moto CPU s", "waiting at end", "caught up s"],
                [[r["label"], f"{r['tps']:.0f}", f"{r['tps'] / off:.2f}x",
                  f"{r['server_cpu_s'] * 1e3 / max(r['transactions'], 1):.3f}", f"{r['wal_mb']:.0f}",
                  f"{r['wal_mb'] * 1e3 / max(r['transactions'], 1):.2f}", str(r["segments"]),
                  f"{r['archiver_cpu_s'] / r['segments']:.3f}" if r["segments"] else "-",
                  f"{r['archiver_cpu_s'] * 1e3 / max(r['transactions'], 1):.3f}",
                  f"{r['archiver_cpu_s'] / r['elapsed_s']:.2f}", f"{r['moto_cpu_s']:.1f}", str(r["backlog"]),
                  f"{r['catch_up_s']:.1f}"] for r in tps]))
    alone_prefix = SERVER_ALONE_LABEL.split("{")[0]

    def runs(prefix: str) -> list[dict]:  # the control of the server alone counts in its rounds (not as a lever)
        return [r for r in tps if r["label"].startswith(prefix) and (prefix != alone_prefix or "(round" in r["label"])]

    offs = [r["tps"] for r in tps if r["label"].split(" (")[0] == "off"]
    alone = [r["tps"] for r in runs(alone_prefix)]
    for name, prefix in (("the server alone", alone_prefix), ("archive_command true", NULL_ARCHIVE_LABEL),
                         ("new defaults", "on, new defaults"), ("pgBackRest", PGBACKREST_LABEL)):
        ons = [r["tps"] for r in runs(prefix)]
        engine_runs = [r for r in runs(prefix) if r["archiver_cpu_s"] and r["server_cpu_s"] and prefix != NULL_ARCHIVE_LABEL]
        if engine_runs:  # CPU figures hold on a busy machine; TPS does not
            share = statistics.median(r["archiver_cpu_s"] / r["server_cpu_s"] for r in engine_runs)
            print(f"archive_command CPU / the server's own CPU, {name}, median of {len(engine_runs)} run(s): {share:.1%}; "
                  f"on a CPU-bound server that is TPS x{1 / (1 + share):.2f}")
        for base_name, base in (("off", offs), ("the server alone", alone)):
            if len(base) > 1 and len(ons) == len(base) and name != base_name:
                print(f"TPS, {name} / {base_name}, medians of {len(base)} alternating rounds: {statistics.median(ons):.0f} / "
                      f"{statistics.median(base):.0f} = {statistics.median(ons) / statistics.median(base):.2f}x (rounds: "
                      f"{', '.join(f'{n / o:.2f}x' for n, o in zip(ons, base))})")
    print("(target: TPS with archiving on >= 0.9x off. CPU per segment and per transaction, and WAL per transaction, "
          "hold on a busy machine; TPS does not. 'cores' = archive_command CPU / run time; 'waiting at end' = segments "
          "not yet archived when pgbench stopped)")
    if cpu_rows:
        print(table(["WAL compression (one engine process per segment)", "CPU s/segment", "min", "wall s", "stored MB",
                     "smaller", "moto CPU s"],
                    [[r["label"], f"{r['cpu_s']:.3f}", f"{r['cpu_min_s']:.3f}", f"{r['wall_s']:.2f}", f"{r['stored_mb']:.2f}",
                      f"{r['ratio']:.1f}x" if r["ratio"] else "-", f"{r['moto_cpu_s']:.3f}"] for r in cpu_rows]))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

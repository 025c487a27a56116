"""One point-in-time recovery from start to finish: the base backup downloaded by the engine into a new data
directory, the recovery settings written, the instance started and watched until it is promoted at its
target, with progress at least every 10 s, and the result measured (recovered time, RTO, size)."""

from __future__ import annotations

import os
import pwd
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.backup.tempfiles import directory_bytes
from loyalty_ops.lib.pitr.archive import DEFAULT_SEGMENT_BYTES, segment_name, segment_parts
from loyalty_ops.lib.pitr.engine import BarmanCloud, BaseBackup, EngineRun
from loyalty_ops.lib.pitr.instance import RecoveryFailed, ScratchInstance, recovered_time_from_log
from loyalty_ops.lib.pitr.target import RecoveryTarget
from loyalty_ops.lib.progress import ProgressSnapshot


@dataclass
class RecoveryResult:
    backup: BaseBackup
    target: RecoveryTarget
    port: int
    data_dir: Path
    recovered_to: Optional[datetime] = None
    replay_lsn: Optional[str] = None
    segments_restored: int = 0
    restored_bytes: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    prefetched_segments: int = 0  # WAL segments fetched ahead into the spool (restore_command found them there)
    prefetch_runs: int = 0  # engine processes that fetched them

    @property
    def rto_s(self) -> float:
        return self.timings.get("total_s", 0.0)

    def metadata(self) -> dict:
        """What a run records of the recovery, as numbers (the UI plots their history)."""
        return {
            "recovered_to": self.recovered_to.isoformat() if self.recovered_to else "",
            "segments_restored": self.segments_restored,
            "wal_prefetched_segments": self.prefetched_segments,
            "wal_prefetch_runs": self.prefetch_runs,
            "restored_bytes": int(self.restored_bytes),
            "download_s": round(self.timings.get("download_s", 0.0), 3),
            "recovery_s": round(self.timings.get("recovery_s", 0.0), 3),
            # from the target reached to accepting connections; left out when the server log does not say
            **({"promote_s": round(self.timings["promote_s"], 3)} if "promote_s" in self.timings else {}),
        }


# Segments fetched ahead while the base backup downloads (a few MB each in the bucket, 16 MB each on disk until
# replayed): the first minutes of replay without waiting for the engine.
PREFETCH_AT_START = 16

TARGET_NOT_REACHED = "recovery ended before configured recovery target was reached"


def explain_unreached_target(message: str, target: RecoveryTarget) -> str:
    """PostgreSQL stops (and does not promote) when the archive ends before the target: say what that means."""
    if TARGET_NOT_REACHED not in message:
        return message
    if target.kind == "time":
        why = (f"the archive holds no transaction that committed after {target.time.isoformat()}, so it cannot "  # type: ignore[union-attr]
               "show that every commit up to that time is in it (the WAL that holds them may not be archived yet). "
               "If the time is recent, wait for the next segment to reach the bucket (at most archive_timeout; "
               "wal_archive_health shows the newest archived WAL) and launch again; to restore everything the "
               "archive has, use latest.")
    else:
        why = (f"the archive ends before {target.describe()}: it was not created, or the WAL that holds it is not "
               "archived yet (wal_archive_health shows the newest archived WAL).")
    return f"recovery stopped without reaching its target: {why}\n{message}"


class WalPrefetch:
    """WAL segments fetched ahead of recovery by the engine into the instance's spool, where ``restore_command``
    takes them without starting the engine: the first ``count`` (from the base backup's first segment on) while
    the base backup downloads, then, while the instance recovers (``follow``), more whenever no more than half
    of that waits in the spool, so replay never stops for an engine start.

    The engine writes into a staging directory beside the spool, and only after it has exited with success
    is each of its files renamed into the spool (atomic on one filesystem): ``restore_command`` only ever finds
    whole segments there. A failed run's files are discarded. Fetching ahead ends at the end of the archive (the
    engine finds no next segment) or when stopped; ``restore_command`` fetches whatever it did not."""

    def __init__(self, engine: BarmanCloud, first_wal: Optional[str], spool_dir: Path, count: int,
                 os_user: Optional[str] = None):
        self.engine, self.spool_dir, self.count = engine, spool_dir, count
        # the instance's OS user (when this process is root): the segments become theirs before the spool has them
        self.owner = (pwd.getpwnam(os_user).pw_uid, pwd.getpwnam(os_user).pw_gid) if os_user and os.geteuid() == 0 else None
        self.staging = spool_dir.with_name(spool_dir.name + ".incoming")
        self.next_wal = first_wal
        self.segment_bytes = DEFAULT_SEGMENT_BYTES
        self.fetched = 0  # segments put into the spool
        self.runs = 0  # engine processes started
        self.failure = ""  # why the last run fetched nothing
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _fetch_batch(self, count: int) -> bool:
        """One engine run from ``next_wal``; False when it fetched nothing (the end of the archive, or a failure)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        try:
            run: Optional[EngineRun] = self.engine.fetch_wal(self.next_wal, self.staging, count)  # type: ignore[arg-type]
        except Exception as exc:  # the engine could not be started: restore_command will say more
            run, self.failure = None, str(exc)
        self.runs += 1
        names = sorted(p.name for p in self.staging.iterdir() if segment_parts(p.name))
        if run is None or run.returncode != 0 or not names:
            if run is not None:
                self.failure = "\n".join(run.output.strip().splitlines()[-3:]) or f"exit code {run.returncode}"
            shutil.rmtree(self.staging, ignore_errors=True)
            return False
        for name in names:
            if self.owner:
                os.chown(self.staging / name, *self.owner)
            os.replace(self.staging / name, self.spool_dir / name)
        self.segment_bytes = (self.spool_dir / names[-1]).stat().st_size  # the cluster's wal_segment_size
        self.next_wal = self._successor(names[-1])
        self.fetched += len(names)
        return True

    def _waiting(self) -> list[str]:
        return sorted(p.name for p in self.spool_dir.iterdir() if segment_parts(p.name))

    def _follow(self) -> None:
        while not self._stop.is_set():
            waiting = self._waiting()
            if len(waiting) > self.count // 2:
                self._stop.wait(0.2)
                continue
            if waiting and waiting[-1] >= (self.next_wal or ""):  # restore_command's own engine got further
                self.next_wal = self._successor(waiting[-1])
            if not self._fetch_batch(self.count - len(waiting)):
                return

    def _successor(self, name: str) -> str:
        timeline, number = segment_parts(name, self.segment_bytes)  # type: ignore[misc]
        return segment_name(timeline, number + 1, self.segment_bytes)

    def start(self) -> None:
        """Fetches the first ``count`` segments in the background (``join`` waits for them)."""
        if self.next_wal and self.count > 0:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._fetch_batch, args=(self.count,), name="wal-fetch-ahead", daemon=True)
            self._thread.start()

    def join(self, log: Callable[[str], None]) -> int:
        """Waits for the first segments; logs and returns how many are in the spool (0 when fetching failed)."""
        if self._thread is None:
            return 0
        self._thread.join()
        self._thread = None
        if self.fetched:
            log(f"{self.fetched} WAL segment(s) fetched ahead, the next from {self.next_wal} on while recovery runs")
        else:
            log(f"fetching WAL ahead failed (recovery fetches each segment itself): {self.failure}")
        return self.fetched

    def follow(self) -> None:
        """Keeps fetching ahead in the background while the instance recovers, until ``stop``."""
        if self.fetched and self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="wal-fetch-ahead", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 120.0) -> None:
        """Stops fetching ahead (an engine run under way finishes first) and removes the staging directory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        shutil.rmtree(self.staging, ignore_errors=True)


def recover(engine: BarmanCloud, instance: ScratchInstance, backup: BaseBackup, target: RecoveryTarget,
            restore_command: str, spec: ConnectionSpec, log: Callable[[str], None], interval_s: float = 10.0,
            prefetch_segments: int = PREFETCH_AT_START) -> RecoveryResult:
    """Recovers ``backup`` + WAL to ``target`` into ``instance`` and leaves it running (promoted). The caller
    stops and removes the instance (a restore keeps it, a drill removes it). While the base backup downloads,
    the engine fetches the first ``prefetch_segments`` WAL segments into the instance's spool."""
    started = time.monotonic()
    result = RecoveryResult(backup, target, instance.port, instance.data_dir)
    instance.base_dir.mkdir(parents=True, exist_ok=True)

    def download_tick(elapsed: float, _line: str) -> None:
        snapshot = ProgressSnapshot(f"base backup {backup.backup_id} downloaded", directory_bytes(instance.data_dir),
                                    backup.cluster_size or None, elapsed)
        log(snapshot.message())

    log(f"downloading base backup {backup.backup_id} (consistent from {backup.end_time}) into {instance.data_dir}")
    ahead = WalPrefetch(engine, backup.begin_wal, instance.spool_dir, prefetch_segments, instance.os_user)
    ahead.start()
    try:
        engine.restore(backup.backup_id, instance.data_dir, tick=download_tick, interval_s=interval_s)
    finally:
        ahead.join(log)
    result.timings["download_s"] = time.monotonic() - started
    instance.configure(restore_command, target.settings())
    log(f"starting the recovering instance on port {instance.port}, target: {target.describe()}")
    instance.start()
    recovery_started = time.monotonic()
    ahead.follow()
    try:
        info = instance.wait_until_promoted(spec, tick=log, interval_s=interval_s, promote_at_target=target.pauses)
        promoted_s = time.monotonic() - started
    except RecoveryFailed as exc:
        raise RecoveryFailed(explain_unreached_target(str(exc), target)) from exc
    finally:
        ahead.stop()  # whatever happened: nothing keeps writing into the instance's directory
    result.timings["recovery_s"] = promoted_s - (recovery_started - started)
    promote_s = instance.promotion_seconds()  # read after the RTO's end: the log line may come a moment later
    if promote_s is not None:
        result.timings["promote_s"] = promote_s
    shutil.rmtree(instance.spool_dir, ignore_errors=True)  # segments fetched ahead past the target: never needed now
    result.prefetched_segments, result.prefetch_runs = ahead.fetched, ahead.runs
    result.replay_lsn = info.get("replay_lsn")
    result.segments_restored = int(info.get("segments_restored") or 0)
    result.recovered_to = recovered_time_from_log(instance.log_text()) or info.get("replayed_to")
    result.restored_bytes = directory_bytes(instance.data_dir)
    result.timings["total_s"] = promoted_s  # until the promoted instance accepted connections
    log(f"promoted at {target.describe()}: recovered to {result.recovered_to}, {result.segments_restored} WAL segment(s) "
        f"replayed, RTO {result.rto_s:.1f} s")
    return result

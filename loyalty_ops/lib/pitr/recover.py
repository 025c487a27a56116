"""One point-in-time recovery from start to finish: the base backup downloaded by the engine into a new data
directory, the recovery settings written, the instance started and watched until it is promoted at its
target, with progress at least every 10 s, and the result measured (recovered time, RTO, size)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.backup.tempfiles import directory_bytes
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

    prefetched_segments: int = 0

    @property
    def rto_s(self) -> float:
        return self.timings.get("total_s", 0.0)

    def metadata(self) -> dict:
        """What a run records of the recovery, as numbers (the UI plots their history)."""
        return {
            "recovered_to": self.recovered_to.isoformat() if self.recovered_to else "",
            "segments_restored": self.segments_restored,
            "wal_prefetched_segments": self.prefetched_segments,
            "restored_bytes": int(self.restored_bytes),
            "download_s": round(self.timings.get("download_s", 0.0), 3),
            "recovery_s": round(self.timings.get("recovery_s", 0.0), 3),
            "promote_s": round(self.timings.get("promote_s", 0.0), 3),
        }


# Segments fetched ahead while the base backup downloads (about 4 MB each in the bucket with lz4 wal_compression,
# 16 MB each on disk until replayed): the first minutes of replay without waiting for the engine.
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
    """The first WAL segments recovery will ask for (from the base backup's first segment on), fetched by the
    engine into the spool directory while the base backup downloads, so that the recovering instance starts
    replaying at once instead of waiting for the engine to start and fetch them. Finished (joined) before the
    instance starts: a file in the spool is whole only once the engine has exited. When it fails, the spool is
    emptied and recovery fetches every segment itself through ``restore_command``."""

    def __init__(self, engine: BarmanCloud, first_wal: Optional[str], spool_dir: Path, count: int):
        self.engine, self.first_wal, self.spool_dir, self.count = engine, first_wal, spool_dir, count
        self.run: Optional[EngineRun] = None
        self.error: Optional[BaseException] = None
        self.started = False
        self.thread = threading.Thread(target=self._fetch, name="wal-prefetch", daemon=True)

    def _fetch(self) -> None:
        try:
            self.run = self.engine.prefetch_wal(self.first_wal, self.spool_dir, self.count)  # type: ignore[arg-type]
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> None:
        if self.first_wal and self.count > 0:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            self.thread.start()
            self.started = True

    def join(self, log: Callable[[str], None]) -> int:
        """Waits for the engine; returns how many segments are in the spool (0 after a failure, spool emptied)."""
        if not self.started:
            return 0
        self.thread.join()
        if self.error is None and self.run is not None and self.run.returncode == 0:
            count = sum(1 for _ in self.spool_dir.iterdir())
            log(f"{count} WAL segment(s) from {self.first_wal} on fetched ahead in {self.run.duration_s:.1f} s")
            return count
        why = str(self.error) if self.error else "\n".join(self.run.output.strip().splitlines()[-3:])  # type: ignore[union-attr]
        log(f"fetching WAL ahead from {self.first_wal} failed (recovery fetches each segment itself): {why}")
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        return 0


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
    prefetch = WalPrefetch(engine, backup.begin_wal, instance.spool_dir, prefetch_segments)
    prefetch.start()
    try:
        engine.restore(backup.backup_id, instance.data_dir, tick=download_tick, interval_s=interval_s)
    finally:
        result.prefetched_segments = prefetch.join(log)
    result.timings["download_s"] = time.monotonic() - started
    instance.configure(restore_command, target.settings())
    log(f"starting the recovering instance on port {instance.port}, target: {target.describe()}")
    instance.start()
    recovery_started = time.monotonic()
    try:
        info = instance.wait_until_promoted(spec, tick=log, interval_s=interval_s, promote_when_paused=target.pauses)
    except RecoveryFailed as exc:
        raise RecoveryFailed(explain_unreached_target(str(exc), target)) from exc
    result.timings["recovery_s"] = time.monotonic() - recovery_started
    result.timings["promote_s"] = float(info.get("promote_s") or 0.0)
    shutil.rmtree(instance.spool_dir, ignore_errors=True)  # segments fetched ahead past the target: never needed now
    result.replay_lsn = info.get("replay_lsn")
    result.segments_restored = int(info.get("segments_restored") or 0)
    try:
        log_text = instance.log_file.read_text(errors="replace")
    except OSError:
        log_text = ""
    result.recovered_to = recovered_time_from_log(log_text) or info.get("replayed_to")
    result.restored_bytes = directory_bytes(instance.data_dir)
    result.timings["total_s"] = time.monotonic() - started
    log(f"promoted at {target.describe()}: recovered to {result.recovered_to}, {result.segments_restored} WAL segment(s) "
        f"replayed, RTO {result.rto_s:.1f} s")
    return result

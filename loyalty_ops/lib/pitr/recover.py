"""One point-in-time recovery from start to finish: the base backup downloaded by the engine into a new data
directory, the recovery settings written, the instance started and watched until it is promoted at its
target, with progress at least every 10 s, and the result measured (recovered time, RTO, size)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.backup.tempfiles import directory_bytes
from loyalty_ops.lib.pitr.engine import BarmanCloud, BaseBackup
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

    @property
    def rto_s(self) -> float:
        return self.timings.get("total_s", 0.0)


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


def recover(engine: BarmanCloud, instance: ScratchInstance, backup: BaseBackup, target: RecoveryTarget,
            restore_command: str, spec: ConnectionSpec, log: Callable[[str], None], interval_s: float = 10.0) -> RecoveryResult:
    """Recovers ``backup`` + WAL to ``target`` into ``instance`` and leaves it running (promoted). The caller
    stops and removes the instance (a restore keeps it, a drill removes it)."""
    started = time.monotonic()
    result = RecoveryResult(backup, target, instance.port, instance.data_dir)
    instance.base_dir.mkdir(parents=True, exist_ok=True)

    def download_tick(elapsed: float, _line: str) -> None:
        snapshot = ProgressSnapshot(f"base backup {backup.backup_id} downloaded", directory_bytes(instance.data_dir),
                                    backup.cluster_size or None, elapsed)
        log(snapshot.message())

    log(f"downloading base backup {backup.backup_id} (consistent from {backup.end_time}) into {instance.data_dir}")
    engine.restore(backup.backup_id, instance.data_dir, tick=download_tick, interval_s=interval_s)
    result.timings["download_s"] = time.monotonic() - started
    instance.configure(restore_command, target.settings())
    log(f"starting the recovering instance on port {instance.port}, target: {target.describe()}")
    instance.start()
    recovery_started = time.monotonic()
    try:
        info = instance.wait_until_promoted(spec, tick=log, interval_s=interval_s)
    except RecoveryFailed as exc:
        raise RecoveryFailed(explain_unreached_target(str(exc), target)) from exc
    result.timings["recovery_s"] = time.monotonic() - recovery_started
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

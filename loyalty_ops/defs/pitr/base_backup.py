"""``base_backup``: a physical base backup through the engine (weekly by default), with blocking checks that the
engine lists it as complete and that the WAL from its start is in the bucket; it takes the database pool, so a
base backup and the logical backup never run together."""

import time
from typing import Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.pitr.health import require_enabled
from loyalty_ops.defs.pitr.resources import PitrResource
from loyalty_ops.defs.resources import OffsiteStorage, PostgresTarget
from loyalty_ops.lib.concurrency import DATABASE_POOL
from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.pitr.archive import bucket_wal, wal_objects
from loyalty_ops.lib.pitr.engine import EngineError

BASE_BACKUP_KEY = dg.AssetKey("base_backup")
COMPLETE_CHECK = "base_backup_complete"
WAL_CHECK = "base_backup_wal_present"


class BaseBackupConfig(dg.Config):
    """Launchpad options of a base backup."""

    jobs: Optional[int] = Field(default=None, description="Upload processes (barman-cloud-backup -J); empty: "
                                "LOYALTY_PITR_BASE_BACKUP_JOBS (default 2).")
    progress_interval_seconds: float = Field(default=10.0, description="How often the run log reports progress (<= 10 s).")


def base_backup_bytes(s3_client, bucket: str, prefix: str) -> int:
    total = 0
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        total += sum(int(item["Size"]) for item in page.get("Contents", []))
    return total


@dg.asset(
    key=BASE_BACKUP_KEY, group_name="pitr", kinds={"postgres", "s3"}, owners=["team:platform"], pool=DATABASE_POOL,
    tags={"loyalty_ops/criticality": "critical"},
    check_specs=[
        dg.AssetCheckSpec(COMPLETE_CHECK, asset=BASE_BACKUP_KEY, blocking=True,
                          description="The engine lists the new base backup with status DONE."),
        dg.AssetCheckSpec(WAL_CHECK, asset=BASE_BACKUP_KEY, blocking=True,
                          description="Every WAL segment from the backup's start WAL to the newest is in the bucket: "
                          "the backup can be made consistent and rolled forward."),
    ],
)
def base_backup(context: dg.AssetExecutionContext, config: BaseBackupConfig, pitr: PitrResource, postgres: PostgresTarget,
                offsite: OffsiteStorage) -> dg.MaterializeResult:
    """A physical base backup of the whole PostgreSQL cluster through barman-cloud-backup, to
    s3://LOYALTY_S3_BUCKET/LOYALTY_PITR_PREFIX/<server>/base/<backup id>/. Metadata: backup id, begin/end LSN,
    WAL and time, size (cluster and in the bucket), duration, compression."""
    require_enabled(pitr)
    if postgres.runner != "host":
        raise dg.Failure("base backups read the data directory, so barman-cloud-backup runs where the server runs: with "
                         "LOYALTY_PG_RUNNER=docker run this job's engine inside the database container (docs/pitr.md)")
    engine = pitr.engine(offsite, postgres)
    interval = min(max(config.progress_interval_seconds, 0.5), 10.0)
    previous = [b for b in engine.list_backups() if b.complete]
    expected = previous[-1].cluster_size if previous else 0
    last_duration = (previous[-1].end_time - previous[-1].begin_time).total_seconds() if previous and previous[-1].begin_time and previous[-1].end_time else None

    def tick(elapsed: float, line: str) -> None:
        eta = f", ETA ~{max(last_duration - elapsed, 0):.0f} s (last one took {last_duration:.0f} s)" if last_duration else ""
        context.log.info(f"base backup running: {elapsed:.0f} s elapsed{eta}; cluster ~{human_bytes(expected)}; "
                         f"engine: {line.split('INFO: ')[-1][:160]}")

    options = pitr.backup_options(config.jobs)
    compression = options.compression
    context.log.info(f"base backup of {postgres.database_name}'s cluster to {engine.location.describe()} "
                     f"({compression}, {options.jobs} upload process(es))")
    started = time.monotonic()
    try:
        backup_id, run = engine.backup(postgres.spec().libpq_env(), options=options, tick=tick, interval_s=interval)
    except EngineError as exc:
        raise dg.Failure(f"base backup failed: {exc}") from None
    duration = time.monotonic() - started
    listed = {b.backup_id: b for b in engine.list_backups()}
    backup = listed.get(backup_id)
    size_in_bucket = base_backup_bytes(offsite.client(), engine.location.bucket, f"{engine.location.base_prefix}{backup_id}/")
    complete = backup is not None and backup.complete
    wal = bucket_wal(wal_objects(offsite.client(), engine.location, backup.begin_wal), backup.begin_wal) if backup else None
    wal_ok = bool(backup and wal and wal.complete and wal.segments > 0)
    metadata = {
        "backup_id": backup_id,
        "status": backup.status if backup else "not listed",
        "begin_lsn": (backup.begin_lsn if backup else None) or "",
        "end_lsn": (backup.end_lsn if backup else None) or "",
        "begin_wal": (backup.begin_wal if backup else None) or "",
        "end_wal": (backup.end_wal if backup else None) or "",
        "begin_time": backup.begin_time.isoformat() if backup and backup.begin_time else "",
        "end_time": backup.end_time.isoformat() if backup and backup.end_time else "",
        "timeline": int(backup.timeline or 0) if backup else 0,
        "cluster_bytes": int(backup.cluster_size) if backup else 0,
        "bytes_in_bucket": int(size_in_bucket),
        "duration_s": round(duration, 3),
        "compression": compression,
        "upload_jobs": options.jobs,
        "destination": engine.location.describe(),
        "base_backups_in_archive": len([b for b in listed.values() if b.complete]),
    }
    context.log.info(f"base backup {backup_id} done in {duration:.1f} s: {human_bytes(size_in_bucket)} in the bucket")
    checks = [
        dg.AssetCheckResult(check_name=COMPLETE_CHECK, passed=complete, severity=dg.AssetCheckSeverity.ERROR,
                            description=f"the engine lists {backup_id} as {metadata['status']}",
                            metadata={"backup_id": backup_id, "database": postgres.database_name}),
        dg.AssetCheckResult(check_name=WAL_CHECK, passed=wal_ok, severity=dg.AssetCheckSeverity.ERROR,
                            description=(f"{wal.segments} WAL segment(s) from {backup.begin_wal} in the bucket, none missing"
                                         if wal_ok else f"WAL missing from the bucket since {backup.begin_wal if backup else '?'}: "
                                         + ", ".join((wal.missing if wal else ())[:5] or ("no segment at all",))),
                            metadata={"backup_id": backup_id, "missing": len(wal.missing) if wal else 0,
                                      "database": postgres.database_name}),
    ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)

"""The nightly backup (``database_backup``): dump, compress, hash, write atomically, manifest."""


import dataclasses
from datetime import timedelta
from typing import Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.settings import current_settings, tool_base_environment
from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, last_verified_backup
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.lib.backup.dump import BackupError, BackupRequest, take_backup
from loyalty_ops.lib.backup.manifest import manifest_path
from loyalty_ops.lib.backup.naming import COMPRESSION_SUFFIXES
from loyalty_ops.lib.backup.object_lock import ObjectLockError, require_object_lock
from loyalty_ops.defs.backups.offsite_copy import start_streaming_upload
from loyalty_ops.lib.backup.offsite import StreamingUpload
from loyalty_ops.lib.concurrency import DATABASE_POOL
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.tools import HostToolRunner, PgToolRunner, ToolError
from loyalty_ops.lib.formatting import human_bytes, markdown_code, markdown_table

OWNERS = ["team:platform"]
BACKUP_MAX_AGE_HOURS = current_settings().backups.max_age_hours
BACKUP_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=BACKUP_MAX_AGE_HOURS), warn_window=timedelta(hours=max(BACKUP_MAX_AGE_HOURS - 1, 1))
)


class BackupConfig(dg.Config):
    """Launchpad options for a backup. The defaults are what the nightly schedule uses."""

    compression: Optional[str] = Field(
        default=None,
        description="Override the compression for this run: 'gzip' (.dump.gz) or 'zstd' (.dump.zst). "
        "Empty uses LOYALTY_COMPRESSION (default gzip).",
    )
    progress_interval_seconds: float = Field(
        default=10.0, description="How often the run log reports bytes done, percent and ETA."
    )
    stream_upload: bool = Field(
        default=True,
        description="Upload to S3 while dumping, as a multipart upload that stays invisible until the "
        "integrity checks pass (then it is completed) or fail (then it is aborted). Off: upload after the checks.",
    )
    accept_size_change: bool = Field(
        default=False,
        description="Accept a legitimate shrink after a large purge for this one run: the size check passes "
        "even when this backup is under half the previous verified one. Recorded in the run's metadata; later "
        "runs compare against this backup.",
    )


def backup_source(postgres: PostgresTarget, backup_storage: BackupStorage) -> tuple[ConnectionSpec, PgToolRunner]:
    """The server to dump: the target, or ``LOYALTY_BACKUP_SOURCE_HOST`` (a hot standby of it), with the
    target's settings for whatever ``LOYALTY_BACKUP_SOURCE_*`` leaves unset."""
    if not backup_storage.source_host:
        return postgres.spec(), postgres.tools()
    if postgres.runner != "host":
        raise dg.Failure(
            "LOYALTY_BACKUP_SOURCE_HOST is set but the tools run in the database container (LOYALTY_PG_RUNNER="
            f"{postgres.runner}): dumping from a standby needs the host runner; unset LOYALTY_DB_CONTAINER or "
            "LOYALTY_BACKUP_SOURCE_HOST"
        )
    target = postgres.spec()
    spec = dataclasses.replace(
        target,
        host=backup_storage.source_host,
        port=backup_storage.source_port or target.port,
        user=backup_storage.source_user or target.user,
        password=backup_storage.source_password or target.password,
    )
    return spec, HostToolRunner(spec, postgres.pg_bin_dir, base_env=tool_base_environment())


def _row_count_table(row_counts: dict[str, int]) -> str:
    return markdown_table(
        ["table", "rows"], [(markdown_code(name), f"{count:,}") for name, count in sorted(row_counts.items())], "lr"
    )


@dg.asset(
    key=BACKUP_ASSET_KEY,
    group_name="backups",
    kinds={"postgres"},
    owners=OWNERS,
    tags={"loyalty_ops/criticality": "critical"},
    freshness_policy=BACKUP_FRESHNESS,
    pool=DATABASE_POOL,
)
def database_backup(
    context: dg.AssetExecutionContext,
    config: BackupConfig,
    postgres: PostgresTarget,
    backup_storage: BackupStorage,
    offsite: OffsiteStorage,
) -> dg.MaterializeResult:
    """A full logical backup of the loyalty database: `pg_dump -Fc` streamed through gzip (or zstd) into
    `LOYALTY_BACKUP_DIR/loyalty_YYYYMMDD_HHMMSS.dump.gz`, with a `sha256sum -c` sidecar and a manifest of
    exact row counts taken in the dump's own snapshot. The cluster globals the database needs (roles,
    password hashes, memberships: `pg_dumpall --globals-only`) go beside it as
    `loyalty_YYYYMMDD_HHMMSS.globals.sql.gz`, and its owner, grants and settings into the manifest. The file appears under its final name only when
    complete and after its sidecar and manifest (mode 0600); two runs in the same second get names one
    second apart, never the same file. Blocking checks verify it before the offsite copy."""
    compression = config.compression or backup_storage.compression
    if compression not in COMPRESSION_SUFFIXES:
        raise dg.Failure(
            f"compression must be 'gzip' or 'zstd', got {compression!r}: fix the run config 'compression' "
            "or LOYALTY_COMPRESSION"
        )
    spec, runner = backup_source(postgres, backup_storage)
    location = backup_storage.location(offsite)
    previous = last_verified_backup(context.instance, exclude_run_id=context.run_id)
    request = BackupRequest(
        backup_dir=location.backup_dir,
        compression=compression,
        compression_level=backup_storage.compression_level,
        progress_interval_s=config.progress_interval_seconds,
        row_counts=backup_storage.row_counts,
        max_rate_mbps=backup_storage.max_rate_mbps,
        nice=backup_storage.nice,
        age_recipients=backup_storage.age_recipients if backup_storage.encrypts else None,
    )
    streaming: list[StreamingUpload] = []
    if location.offsite_configured and location.object_lock_days:
        try:  # before anything is written: locking was asked for, the bucket must be able to do it
            context.log.info(require_object_lock(offsite.client(), location.bucket, location.object_lock_days))
        except ObjectLockError as exc:
            raise dg.Failure(description=str(exc), metadata={"bucket": location.bucket}) from None
        if config.stream_upload:
            context.log.info(
                "Object Lock: the offsite copy is uploaded after the checks, not streamed (a streamed upload is "
                "stamped with its checksum by a copy, which would keep a second locked version of every backup)"
            )

    def open_sink(name, expected_bytes):
        if not (config.stream_upload and location.offsite_configured) or location.object_lock_days:
            return None
        upload = start_streaming_upload(context, location, offsite.client(), name, expected_bytes)
        if upload is None:
            return None
        streaming.append(upload)
        return upload.write

    try:
        result = take_backup(
            spec,
            runner,
            request,
            on_progress=lambda snap: context.log.info(snap.message()),
            open_sink=open_sink,
            log=context.log.info,
        )
        pending = streaming[0].finish() if streaming else None
    except BaseException as exc:
        # Whatever failed (the dump, the disk, the manifest, the last parts), no multipart upload is left.
        for upload in streaming:
            upload.abort()
        if isinstance(exc, (BackupError, ToolError, ValueError)):
            raise dg.Failure(description=str(exc), metadata={"target": spec.redacted()}) from None
        raise

    manifest_file = manifest_path(result.path)
    duration = result.file.duration_s
    roles = result.globals_dump
    if roles is not None and not roles.role_passwords:
        context.log.warning(f"cluster globals {result.globals_path.name}: {roles.reason}")
    context.log.info(
        f"backup written: {result.path} ({human_bytes(result.file.written_bytes)} from "
        f"{human_bytes(result.file.raw_bytes)} of archive in {duration:.1f} s), sha256 {result.file.sha256}"
    )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(result.path)),
            "filename": result.path.name,
            "manifest_path": dg.MetadataValue.path(str(manifest_file)),
            "bytes": result.file.written_bytes,
            "raw_bytes": result.file.raw_bytes,
            "compression": compression,
            "compression_ratio": round(result.file.raw_bytes / max(result.file.written_bytes, 1), 3),
            "duration_s": round(duration, 3),
            "throughput_mb_s": round(result.file.raw_bytes / 1e6 / max(duration, 1e-6), 2),
            "sha256": result.file.sha256,
            "pg_dump_version": result.pg_dump_version,
            "server_version": result.server_version,
            "database": spec.dbname,
            "target": spec.redacted(),
            "runner": result.runner,
            "table_count": len(result.tables),
            "total_rows": sum(result.row_counts.values()),
            "row_counts": dg.MetadataValue.json(result.row_counts),
            "row_counts_table": dg.MetadataValue.md(_row_count_table(result.row_counts)),
            "row_counts_source": result.row_counts_source,
            "row_counts_note": result.row_counts_note,
            "max_rate_mbps": float(backup_storage.max_rate_mbps or 0.0),
            "throttled_s": round(result.file.throttled_s, 3),
            "read_back_wait_s": round(result.file.read_back_wait_s, 3),
            "nice": int(backup_storage.nice),
            "source_standby": bool(result.source.get("standby")),
            "source_max_lag_s": float(backup_storage.source_max_lag_s),
            **({"source_lag_s": round(result.source["lag_s"], 3)} if result.source.get("lag_s") is not None else {}),
            "catalog_counts": dg.MetadataValue.json(result.catalog_counts),
            "previous_backup_bytes": previous.bytes if previous and previous.bytes else 0,
            "taken_at": result.name.taken_at.isoformat(),
            "accept_size_change": bool(config.accept_size_change),
            **({"in_pass_checks": dg.MetadataValue.json(result.in_pass_checks)} if result.in_pass_checks else {}),
            **({"read_back_checks": dg.MetadataValue.json(result.read_back_checks)} if result.read_back_checks else {}),
            **(
                {
                    "globals_filename": result.globals_path.name,
                    "globals_sha256": roles.sha256,
                    "globals_bytes": len(roles.content),
                    "globals_roles": roles.roles,
                    "role_passwords": roles.role_passwords,
                    "database_owner": result.database_properties.get("owner") or "",
                    "encrypted": result.name.encrypted,
                }
                if roles is not None and result.globals_path is not None
                else {}
            ),
            **(
                {
                    "pending_upload_id": pending.upload_id,
                    "pending_upload_key": pending.key,
                    "pending_upload_parts": pending.parts,
                    "pending_upload_part_bytes": pending.part_bytes,
                }
                if pending
                else {}
            ),
        }
    )

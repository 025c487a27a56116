"""The ``pitr`` resource: the PITR settings (LOYALTY_PITR_*), and the engine, the archive location and the S3
access built from them and the shared ``offsite`` resource (same bucket and AWS settings as the offsite copy)."""

import shutil
import sys
from pathlib import Path
from typing import Mapping, Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.resources import OffsiteStorage, PostgresTarget
from loyalty_ops.defs.settings import tool_base_environment
from loyalty_ops.lib.pg.tools import find_bin_dir
from loyalty_ops.lib.pitr.engine import BarmanCloud, S3Access, restore_command
from loyalty_ops.lib.pitr.instance import ScratchInstance
from loyalty_ops.lib.pitr.location import DEFAULT_PITR_PREFIX, PitrConfigError, PitrLocation
from loyalty_ops.lib.pitr.options import (DEFAULT_ARCHIVE_NICE, DEFAULT_BACKUP_COMPRESSION, DEFAULT_BACKUP_JOBS,
                                          DEFAULT_SERVER_WAL_COMPRESSION, DEFAULT_WAL_COMPRESSION, ArchiveOptions,
                                          BackupOptions, parse_instance_settings)


def installed_engine_dir() -> str:
    """Where this installation's barman-cloud-* console scripts are (beside this Python), else PATH's."""
    beside = Path(sys.executable).parent
    if (beside / "barman-cloud-backup").exists():
        return str(beside)
    found = shutil.which("barman-cloud-backup")
    if found:
        return str(Path(found).parent)
    raise dg.Failure("barman-cloud-backup is not installed: pip install 'barman[cloud]' (a dependency of loyalty_ops)")


class PitrResource(dg.ConfigurableResource):
    """Point-in-time recovery settings: where WAL and base backups live, how much lag pages, the recovery window."""

    enabled: bool = Field(default=False, description="PITR is on (LOYALTY_PITR_ENABLED); off: PITR steps skip and say so.")
    prefix: str = Field(default=DEFAULT_PITR_PREFIX, description="Key prefix (LOYALTY_PITR_PREFIX).")
    server_name: Optional[str] = Field(default=None, description="Engine server name (LOYALTY_PITR_SERVER_NAME); default the database's.")
    max_lag_seconds: float = Field(default=300.0, description="Lag that pages (LOYALTY_PITR_MAX_LAG_SECONDS).")
    archive_timeout_seconds: int = Field(default=60, description="archive_timeout of the generated settings.")
    recovery_window_days: int = Field(default=30, description="Recovery window (LOYALTY_PITR_RECOVERY_WINDOW_DAYS).")
    barman_bin_dir: Optional[str] = Field(
        default=None, description="barman-cloud-* as the PostgreSQL OS user runs them (LOYALTY_PITR_BARMAN_BIN_DIR).")
    work_dir: Optional[str] = Field(default=None, description="Scratch instances of the drill (LOYALTY_PITR_WORK_DIR).")
    instance_settings: Optional[str] = Field(default=None, description="Server settings of recovered instances over the "
                                             "source's (LOYALTY_PITR_INSTANCE_SETTINGS): NAME=VALUE,...")
    wal_compression: str = Field(default=DEFAULT_WAL_COMPRESSION, description="WAL compression of archive_command "
                                 "(LOYALTY_PITR_WAL_COMPRESSION): zstd, lz4, gzip, snappy or none.")
    wal_compression_level: Optional[int] = Field(default=None, description="Its level (LOYALTY_PITR_WAL_COMPRESSION_LEVEL); "
                                                 "empty: ours for that compression.")
    archive_nice: int = Field(default=DEFAULT_ARCHIVE_NICE, description="CPU priority of the archiver's engine process, "
                              "nice 0-19 (LOYALTY_PITR_ARCHIVE_NICE).")
    server_wal_compression: str = Field(default=DEFAULT_SERVER_WAL_COMPRESSION, description="The server's wal_compression "
                                        "in the generated settings (LOYALTY_PITR_SERVER_WAL_COMPRESSION).")
    base_backup_compression: str = Field(default=DEFAULT_BACKUP_COMPRESSION, description="Base backup compression "
                                         "(LOYALTY_PITR_BASE_BACKUP_COMPRESSION): lz4, gzip, snappy or none.")
    base_backup_jobs: int = Field(default=DEFAULT_BACKUP_JOBS, description="Upload processes of a base backup "
                                  "(LOYALTY_PITR_BASE_BACKUP_JOBS).")
    archive_wait_seconds: float = Field(default=300.0, description="How long the drill waits for its WAL to reach the bucket.")

    def location(self, offsite: OffsiteStorage, postgres: PostgresTarget) -> PitrLocation:
        if not offsite.configured:
            raise dg.Failure("PITR needs a bucket: set LOYALTY_S3_BUCKET (WAL and base backups go to LOYALTY_PITR_PREFIX there)")
        try:
            return PitrLocation.of(offsite.bucket, self.prefix, self.server_name or postgres.database_name)  # type: ignore[arg-type]
        except PitrConfigError as exc:
            raise dg.Failure(str(exc)) from None

    def access(self, offsite: OffsiteStorage) -> S3Access:
        s3 = offsite.s3
        credentials = {
            "AWS_ACCESS_KEY_ID": s3.aws_access_key_id, "AWS_SECRET_ACCESS_KEY": s3.aws_secret_access_key,
            "AWS_SESSION_TOKEN": s3.aws_session_token,
        }
        return S3Access(endpoint_url=s3.endpoint_url, region=s3.region_name, sse=offsite.sse, kms_key_id=offsite.kms_key_id,
                        credentials={k: v for k, v in credentials.items() if v})

    def engine(self, offsite: OffsiteStorage, postgres: PostgresTarget) -> BarmanCloud:
        return BarmanCloud(self.location(offsite, postgres), self.access(offsite), installed_engine_dir(),
                           base_env=tool_base_environment())

    def archive_options(self) -> ArchiveOptions:
        """How archive_command compresses and at which CPU priority it runs (the generated settings use these)."""
        try:
            return ArchiveOptions(self.wal_compression, self.wal_compression_level, self.archive_nice,
                                  self.server_wal_compression)
        except PitrConfigError as exc:
            raise dg.Failure(str(exc)) from None

    def backup_options(self, jobs: Optional[int] = None) -> BackupOptions:
        try:
            return BackupOptions(self.base_backup_compression, jobs or self.base_backup_jobs)
        except PitrConfigError as exc:
            raise dg.Failure(str(exc)) from None

    def recovery_settings(self, override: Optional[str] = None) -> dict[str, str]:
        """Server settings of a recovered instance over the source's configuration: ``override`` (a job's
        server_settings) or LOYALTY_PITR_INSTANCE_SETTINGS. Raises PitrConfigError naming the one that is wrong."""
        if override is not None:
            return parse_instance_settings(override, "server_settings")
        return parse_instance_settings(self.instance_settings, "LOYALTY_PITR_INSTANCE_SETTINGS")

    def recovering_instance(self, base: Path, port: int, postgres: PostgresTarget, engine: BarmanCloud,
                            settings: Mapping[str, str]) -> ScratchInstance:
        """A new instance that recovers from this archive into ``base``: the database server's binaries, the
        engine's S3 access in its environment, ``settings`` (``recovery_settings``) over the source's configuration."""
        return ScratchInstance(base, port, self.server_bin_dir(postgres), settings=dict(settings),
                               environment={**tool_base_environment(), **engine.access.env()})

    def restore_command_for(self, engine: BarmanCloud, instance: ScratchInstance) -> str:
        """The instance's restore_command: the server's engine, fetching ahead into the instance's spool."""
        return restore_command(self.server_engine_dir(), engine.location, engine.access, str(instance.spool_dir))

    def server_engine_dir(self) -> str:
        """barman-cloud-* for archive_command and restore_command."""
        return self.barman_bin_dir or installed_engine_dir()

    def server_bin_dir(self, postgres: PostgresTarget) -> str:
        """pg_ctl of the scratch instances (beside pg_dump: LOYALTY_PG_BIN_DIR or the newest install)."""
        found = find_bin_dir(postgres.pg_bin_dir)
        if not found or not (Path(found) / "pg_ctl").exists():
            raise dg.Failure("pg_ctl not found beside pg_dump: install the PostgreSQL server package (postgresql-15) or set "
                             "LOYALTY_PG_BIN_DIR")
        return found


def pitr_resource(settings) -> PitrResource:
    """The resource from the validated settings (unset variables keep the defaults)."""
    pitr = settings.pitr
    values = {
        "enabled": pitr.enabled,
        "prefix": pitr.prefix,
        "server_name": pitr.server_name,
        "max_lag_seconds": pitr.max_lag_seconds,
        "archive_timeout_seconds": pitr.archive_timeout_seconds,
        "recovery_window_days": pitr.recovery_window_days,
        "barman_bin_dir": pitr.barman_bin_dir,
        "work_dir": pitr.work_dir,
        "instance_settings": pitr.instance_settings,
        "wal_compression": pitr.wal_compression,
        "wal_compression_level": pitr.wal_compression_level,
        "archive_nice": pitr.archive_nice,
        "server_wal_compression": pitr.server_wal_compression,
        "base_backup_compression": pitr.base_backup_compression,
        "base_backup_jobs": pitr.base_backup_jobs,
    }
    return PitrResource(**{k: v for k, v in values.items() if v is not None})

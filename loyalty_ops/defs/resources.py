"""Resources shared by every domain: the target PostgreSQL database, local backup storage, the offsite
copy on S3. Each is a thin Dagster wrapper over a pure ``loyalty_ops.lib`` object."""


import dataclasses
from pathlib import Path
from typing import Optional

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from loyalty_ops.defs.settings import tool_base_environment
from loyalty_ops.lib.backup.location import DEFAULT_BACKUP_DIR, DEFAULT_PREFIX, BackupLocation, LocationError
from loyalty_ops.lib.pg.connection import DEFAULT_DATABASE, ConnectionConfigError, ConnectionSpec
from loyalty_ops.lib.pg.tools import HostToolRunner, PgToolRunner


class PostgresTarget(dg.ConfigurableResource):
    """The loyalty PostgreSQL database the operations run against (libpq settings or one URL)."""

    database_url: Optional[str] = Field(
        default=None, description="postgresql:// URL (LOYALTY_DATABASE_URL). Overrides the separate fields."
    )
    host: Optional[str] = Field(default=None, description="Server host (PGHOST).")
    port: Optional[int] = Field(default=None, description="Server port (PGPORT).")
    user: Optional[str] = Field(default=None, description="Role to connect as (PGUSER).")
    password: Optional[str] = Field(default=None, description="Password (PGPASSWORD); read through EnvVar.")
    database: str = Field(default=DEFAULT_DATABASE, description="Database name (PGDATABASE), default loyalty.")
    sslmode: Optional[str] = Field(default=None, description="libpq sslmode (PGSSLMODE).")
    connect_timeout: int = Field(default=10, description="Seconds to wait for a connection (PGCONNECT_TIMEOUT).")
    libpq_settings: dict[str, str] = Field(
        default_factory=dict,
        description="Further libpq settings given to the tools and the driver alike: PGSSLROOTCERT, PGSSLCERT, "
        "PGSSLKEY, PGSSLCRL, PGPASSFILE, PGSERVICE, PGSERVICEFILE, PGAPPNAME, PGTARGETSESSIONATTRS, PGOPTIONS.",
    )
    runner: str = Field(
        default="host",
        description="Where pg_dump/pg_restore/psql run: 'host' (local binaries) or 'docker' (exec in a container).",
    )
    container: Optional[str] = Field(
        default=None, description="Database container for the docker runner (LOYALTY_DB_CONTAINER)."
    )
    docker_host: Optional[str] = Field(default=None, description="Docker API address (DOCKER_HOST).")
    container_pghost: Optional[str] = Field(
        default=None, description="PGHOST inside the container, 'local' for its socket (LOYALTY_DB_CONTAINER_PGHOST)."
    )
    container_pgport: Optional[int] = Field(default=None, description="PGPORT inside the container (LOYALTY_DB_CONTAINER_PGPORT).")
    container_user: Optional[str] = Field(default=None, description="OS user of the exec (LOYALTY_DB_CONTAINER_USER).")
    pg_bin_dir: Optional[str] = Field(default=None, description="Directory of the host's PostgreSQL tools.")

    def spec(self, database: Optional[str] = None) -> ConnectionSpec:
        """The connection settings; a malformed one fails the step with the message naming the setting."""
        try:
            return self._spec(database)
        except ConnectionConfigError as exc:
            raise dg.Failure(str(exc)) from None

    def _spec(self, database: Optional[str] = None) -> ConnectionSpec:
        if self.database_url:
            spec = ConnectionSpec.from_url(self.database_url)
            spec = dataclasses.replace(spec, extra_env={**self.libpq_settings, **spec.extra_env})
        else:
            spec = ConnectionSpec(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                dbname=self.database,
                sslmode=self.sslmode,
                connect_timeout=self.connect_timeout,
                extra_env=dict(self.libpq_settings),
            )
        return spec.with_database(database) if database else spec

    @property
    def database_name(self) -> str:
        return self.spec().dbname

    def tools(self, database: Optional[str] = None) -> PgToolRunner:
        """The runner for pg_dump/pg_restore/psql chosen by ``runner``."""
        spec = self.spec(database)
        if self.runner == "host":
            return HostToolRunner(spec, self.pg_bin_dir, base_env=tool_base_environment())
        if self.runner == "docker":
            from loyalty_ops.lib.pg.docker_runner import DockerExecToolRunner  # added with the docker runner

            if not self.container:
                raise dg.Failure("runner is 'docker' but no container is set: set LOYALTY_DB_CONTAINER=loyalty-db-prod")
            return DockerExecToolRunner(
                spec, self.container, docker_host=self.docker_host,
                exec_host=self.container_pghost, exec_port=self.container_pgport, exec_user=self.container_user,
            )
        raise dg.Failure(f"runner must be 'host' or 'docker', got {self.runner!r} (LOYALTY_PG_RUNNER)")


class BackupStorage(dg.ConfigurableResource):
    """Where backup files are written on this machine, and how they are compressed."""

    backup_dir: str = Field(default=DEFAULT_BACKUP_DIR, description="Directory for backup files (LOYALTY_BACKUP_DIR).")
    compression: str = Field(
        default="gzip", description="'gzip' (.dump.gz, gunzip -t compatible) or 'zstd' (.dump.zst, faster)."
    )
    compression_level: Optional[int] = Field(
        default=None, description="Compression level; default 1 for gzip, 3 for zstd (LOYALTY_COMPRESSION_LEVEL)."
    )
    encryption: str = Field(default="none", description="'none' or 'age' (LOYALTY_BACKUP_ENCRYPTION).")
    age_recipients: Optional[str] = Field(
        default=None, description="age public keys backups are encrypted to (LOYALTY_BACKUP_AGE_RECIPIENTS)."
    )
    age_identity_file: Optional[str] = Field(
        default=None,
        description="The age private key file, to restore, drill and check encrypted backups "
        "(LOYALTY_BACKUP_AGE_IDENTITY_FILE); read through EnvVar, never shown.",
    )

    @property
    def encrypts(self) -> bool:
        return self.encryption == "age"

    def identities(self, purpose: str) -> list:
        """The age identities, to decrypt for ``purpose`` (a restore, a drill); a clear refusal without them."""
        from loyalty_ops.lib.backup.encryption import EncryptionConfigError, load_identities

        if not self.age_identity_file:
            raise EncryptionConfigError(
                f"this backup is encrypted (age) and {purpose} needs the private key: set "
                "LOYALTY_BACKUP_AGE_IDENTITY_FILE to the file age-keygen wrote (e.g. /etc/loyalty/backup-age-key.txt)"
            )
        return load_identities(self.age_identity_file)
    row_counts: str = Field(
        default="stream", description="'stream' (rows counted in the dump stream) or 'count' (count(*) in the "
        "dump's snapshot) (LOYALTY_BACKUP_ROW_COUNTS)."
    )
    max_rate_mbps: Optional[float] = Field(
        default=None, description="Cap on the dump stream in MB/s, by back-pressure (LOYALTY_BACKUP_MAX_RATE_MBPS)."
    )
    nice: int = Field(default=0, description="Lower CPU priority 0-19 for pg_dump and the compressor (LOYALTY_BACKUP_NICE).")
    source_host: Optional[str] = Field(
        default=None, description="Dump from this server (a standby) instead of the target (LOYALTY_BACKUP_SOURCE_HOST)."
    )
    source_port: Optional[int] = Field(default=None, description="Backup source port (LOYALTY_BACKUP_SOURCE_PORT).")
    source_user: Optional[str] = Field(default=None, description="Backup source role (LOYALTY_BACKUP_SOURCE_USER).")
    source_password: Optional[str] = Field(
        default=None, description="Backup source password (LOYALTY_BACKUP_SOURCE_PASSWORD); pass it as an EnvVar."
    )
    source_max_lag_s: float = Field(
        default=300.0, description="Most a standby source may lag at dump time (LOYALTY_BACKUP_SOURCE_MAX_LAG_S)."
    )

    @property
    def path(self) -> Path:
        return Path(self.backup_dir).expanduser().resolve()

    def location(self, offsite: Optional["OffsiteStorage"] = None) -> BackupLocation:
        """Where backups live: this directory and, when ``offsite`` has a bucket, its S3 prefix. The one
        object backup, restore, retention and the reports take their file names and keys from."""
        if offsite is None:
            return BackupLocation(self.path)
        if not offsite.configured:
            return BackupLocation(self.path, prefix=offsite.prefix)
        try:
            return BackupLocation(
                self.path, offsite.bucket, offsite.prefix, offsite.sse, offsite.kms_key_id, offsite.storage_class,
                offsite.object_lock_days, offsite.object_lock_mode,
            )
        except LocationError as exc:
            raise dg.Failure(f"offsite settings are invalid: {exc}") from None


class OffsiteStorage(dg.ConfigurableResource):
    """The offsite copy on S3 (or an S3-compatible endpoint). With no bucket, no offsite copy is made."""

    s3: dg.ResourceDependency[S3Resource]
    bucket: Optional[str] = Field(default=None, description="Bucket for offsite copies (LOYALTY_S3_BUCKET).")
    prefix: str = Field(default=DEFAULT_PREFIX, description="Key prefix (LOYALTY_S3_PREFIX).")
    sse: str = Field(default="AES256", description="Server-side encryption: AES256 or aws:kms (LOYALTY_S3_SSE).")
    kms_key_id: Optional[str] = Field(default=None, description="KMS key id for aws:kms (LOYALTY_S3_KMS_KEY_ID).")
    storage_class: str = Field(default="STANDARD", description="S3 storage class (LOYALTY_S3_STORAGE_CLASS).")
    object_lock_days: Optional[int] = Field(
        default=None, description="S3 Object Lock retention of every object, in days (LOYALTY_S3_OBJECT_LOCK_DAYS)."
    )
    object_lock_mode: str = Field(
        default="GOVERNANCE", description="GOVERNANCE or COMPLIANCE (LOYALTY_S3_OBJECT_LOCK_MODE)."
    )

    @property
    def configured(self) -> bool:
        return bool(self.bucket)

    def client(self):
        return self.s3.get_client()

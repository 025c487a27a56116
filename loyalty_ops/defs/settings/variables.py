"""Every environment variable the code location reads: its name, type, default and meaning, by domain.

This file is the reference. Each field's alias is the variable; its description is what it means (and the
default that applies when it is unset); ``example`` is a good value, shown in every refusal. Unset or blank
variables are ``None`` here, and the resource's own default applies. Secrets are ``SecretStr``: only
whether they are set is used (they reach Dagster as ``dg.EnvVar`` references) and their values are never
put in a message.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from loyalty_ops.lib.alerting.notifiers import split_pagerduty_events_url
from loyalty_ops.lib.backup.encryption import EncryptionConfigError, load_identities, parse_recipients
from loyalty_ops.lib.backup.location import upload_settings_problems
from loyalty_ops.lib.pg.connection import ConnectionConfigError, ConnectionSpec
from loyalty_ops.lib.pitr.location import PitrConfigError, check_cron, check_server_name, normalise_prefix
from loyalty_ops.lib.pitr.options import check_wal_compression, parse_instance_settings
from loyalty_ops.lib.restore.plan import DRILL_EVERY_ENV, RestoreConfigError, parse_drill_every


def variable(name: str, meaning: str, example: str, *, secret: bool = False, default: Any = None, **constraints: Any) -> Any:
    """A field read from the environment variable ``name``."""
    extra = {"example": example, "secret": secret}
    return Field(default=default, validation_alias=name, description=meaning, json_schema_extra=extra, **constraints)


def positive_number(name: str, meaning: str, example: str, **bounds: Any) -> Any:
    return variable(name, meaning, example, allow_inf_nan=False, **({"gt": 0} | bounds))


PORT = {"ge": 1, "le": 65535}


def require_url(value: Optional[str], schemes: tuple[str, ...]) -> Optional[str]:
    scheme, separator, rest = (value or "").partition("://")
    if value is not None and not (separator and scheme in schemes and rest):
        raise ValueError(f"must be a {' or '.join(s + '://' for s in schemes)} URL")
    return value


class DomainVariables(BaseModel):
    """One domain's variables, validated together; unknown variables are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class PostgresVariables(DomainVariables):
    """The target database (libpq's own variables) and where its tools run."""

    database_url: Optional[SecretStr] = variable(
        "LOYALTY_DATABASE_URL", "postgresql:// URL of the target; wins over the PG* variables. Secret.",
        "postgresql://user:password@db.example.com:5432/loyalty?sslmode=require", secret=True)
    host: Optional[str] = variable("PGHOST", "Server host or socket directory (libpq's default).", "db.example.com")
    port: Optional[int] = variable("PGPORT", "Server port (libpq's default 5432).", "5432", **PORT)
    user: Optional[str] = variable("PGUSER", "Role to connect as (libpq's default: the OS user).", "loyalty_ops")
    password: Optional[SecretStr] = variable("PGPASSWORD", "Password of PGUSER. Secret.", "...", secret=True)
    database: Optional[str] = variable("PGDATABASE", "Database to back up and maintain (default loyalty).", "loyalty")
    sslmode: Optional[Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]] = variable(
        "PGSSLMODE", "libpq sslmode (libpq's default prefer).", "verify-full")
    connect_timeout: Optional[int] = variable(
        "PGCONNECT_TIMEOUT", "Seconds to wait for a connection (default 10).", "10", gt=0)
    sslrootcert: Optional[str] = variable("PGSSLROOTCERT", "CA file the server certificate is checked against.", "/etc/loyalty/ca.crt")
    sslcert: Optional[str] = variable("PGSSLCERT", "Client certificate file.", "/etc/loyalty/client.crt")
    sslkey: Optional[str] = variable("PGSSLKEY", "Client key file.", "/etc/loyalty/client.key")
    sslcrl: Optional[str] = variable("PGSSLCRL", "Certificate revocation list file.", "/etc/loyalty/root.crl")
    passfile: Optional[str] = variable("PGPASSFILE", "Password file (libpq's default ~/.pgpass).", "/etc/loyalty/pgpass")
    service: Optional[str] = variable("PGSERVICE", "Service name in the service file.", "loyalty")
    servicefile: Optional[str] = variable("PGSERVICEFILE", "Service file (libpq's default ~/.pg_service.conf).", "/etc/loyalty/pg_service.conf")
    appname: Optional[str] = variable("PGAPPNAME", "application_name (default loyalty_ops).", "loyalty_ops")
    target_session_attrs: Optional[Literal["any", "read-write", "read-only", "primary", "standby", "prefer-standby"]] = variable(
        "PGTARGETSESSIONATTRS", "Which server of a host list to use (libpq's default any).", "read-write")
    options: Optional[str] = variable("PGOPTIONS", "Server options for every session.", "-c statement_timeout=0")
    pg_bin_dir: Optional[str] = variable(
        "LOYALTY_PG_BIN_DIR", "Directory of pg_dump/pg_restore/psql (default: newest /usr/lib/postgresql/*/bin, else PATH).",
        "/usr/lib/postgresql/15/bin")
    runner: Optional[Literal["host", "docker"]] = variable(
        "LOYALTY_PG_RUNNER", "Where the tools run: host, or docker (exec in LOYALTY_DB_CONTAINER); default host, "
        "docker when LOYALTY_DB_CONTAINER is set.", "docker")
    container: Optional[str] = variable("LOYALTY_DB_CONTAINER", "Database container of the docker runner.", "loyalty-db-prod")
    container_pghost: Optional[str] = variable(
        "LOYALTY_DB_CONTAINER_PGHOST", "PGHOST inside the container ('local' for its Unix socket); default PGHOST.", "localhost")
    container_pgport: Optional[int] = variable(
        "LOYALTY_DB_CONTAINER_PGPORT", "PGPORT inside the container; default PGPORT.", "5432", **PORT)
    container_user: Optional[str] = variable(
        "LOYALTY_DB_CONTAINER_USER", "OS user of the exec in the container (default: the image's user).", "postgres")

    @field_validator("database_url")
    @classmethod
    def check_database_url(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        if value is not None:
            try:
                ConnectionSpec.from_url(value.get_secret_value())
            except ConnectionConfigError as exc:  # its message names the scheme or port, never the password
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def check_runner_has_a_container(self) -> "PostgresVariables":
        if self.runner == "docker" and not self.container:
            raise ValueError("LOYALTY_PG_RUNNER is 'docker' but LOYALTY_DB_CONTAINER is not set; example: "
                             "LOYALTY_DB_CONTAINER=loyalty-db-prod")
        return self

    def libpq_settings(self) -> dict[str, str]:
        """The passed-through libpq settings that are set, by variable name."""
        fields = type(self).model_fields
        names = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile", "service", "servicefile", "appname",
                 "target_session_attrs", "options")
        return {fields[n].validation_alias: getattr(self, n) for n in names if getattr(self, n)}  # type: ignore[misc]

    @property
    def database_name(self) -> str:
        """The database the jobs work on: LOYALTY_DATABASE_URL's, else PGDATABASE, else loyalty."""
        if self.database_url is not None:
            return ConnectionSpec.from_url(self.database_url.get_secret_value()).dbname
        return ConnectionSpec(dbname=self.database).dbname if self.database else ConnectionSpec().dbname


class BackupVariables(DomainVariables):
    """Local backup files."""

    backup_dir: Optional[str] = variable(
        "LOYALTY_BACKUP_DIR", "Directory of backup files and their sidecars (default backups).", "/var/backups/loyalty")
    compression: Optional[Literal["gzip", "zstd"]] = variable(
        "LOYALTY_COMPRESSION", "gzip (.dump.gz) or zstd (.dump.zst); default gzip.", "zstd")
    compression_level: Optional[int] = variable(
        "LOYALTY_COMPRESSION_LEVEL", "1-9 for gzip (default 1), 1-22 for zstd (default 3).", "3", ge=1, le=22)
    max_age_hours: float = variable(
        "LOYALTY_BACKUP_MAX_AGE_HOURS", "Freshness window of the backup asset, and when page_on_stale_backup pages "
        "(default 26); more than 1 hour.", "26", default=26.0, gt=1, allow_inf_nan=False)
    row_counts: Optional[Literal["stream", "count"]] = variable(
        "LOYALTY_BACKUP_ROW_COUNTS", "Where the manifest's exact row counts come from: stream (counted in the dump "
        "stream as it passes, each table read once; default) or count (count(*) in the dump's snapshot, a second "
        "read of every table).", "stream")
    max_rate_mbps: Optional[float] = positive_number(
        "LOYALTY_BACKUP_MAX_RATE_MBPS", "Cap on the dump stream in MB/s, by back-pressure on pg_dump's pipe (the "
        "server's COPY waits); default no cap.", "40")
    nice: Optional[int] = variable(
        "LOYALTY_BACKUP_NICE", "Lower CPU priority (0-19) for pg_dump (host runner) and the backup's compressor "
        "thread; default 0 (unchanged).", "10", ge=0, le=19)
    source_host: Optional[str] = variable(
        "LOYALTY_BACKUP_SOURCE_HOST", "Dump from this server (a hot standby) instead of the target; the other "
        "LOYALTY_BACKUP_SOURCE_* default to the target's.", "db-standby.example.com")
    source_port: Optional[int] = variable(
        "LOYALTY_BACKUP_SOURCE_PORT", "Port of the backup source (default: the target's).", "5432", **PORT)
    source_user: Optional[str] = variable(
        "LOYALTY_BACKUP_SOURCE_USER", "Role on the backup source (default: the target's).", "loyalty_backup")
    source_password: Optional[SecretStr] = variable(
        "LOYALTY_BACKUP_SOURCE_PASSWORD", "Password on the backup source (default: the target's). Secret.", "...",
        secret=True)
    source_max_lag_s: Optional[float] = positive_number(
        "LOYALTY_BACKUP_SOURCE_MAX_LAG_S", "The blocking check backup_source_lag_within_limit fails when the standby "
        "was further behind its primary than this at dump time (default 300).", "300")

    encryption: Optional[Literal["none", "age"]] = variable(
        "LOYALTY_BACKUP_ENCRYPTION", "Client-side encryption of every backup and its globals file: none (default) or "
        "age (.dump.gz.age; `age -d -i key.txt FILE | gunzip | pg_restore` reads it).", "age")
    age_recipients: Optional[str] = variable(
        "LOYALTY_BACKUP_AGE_RECIPIENTS", "age public keys the backups are encrypted to, comma separated (age1..., "
        "or ssh-ed25519 ...); required with LOYALTY_BACKUP_ENCRYPTION=age.",
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p")
    age_identity_file: Optional[SecretStr] = variable(
        "LOYALTY_BACKUP_AGE_IDENTITY_FILE", "File holding the age private key (age-keygen -o FILE): needed only to "
        "restore, drill and check encrypted backups. Secret.", "/etc/loyalty/backup-age-key.txt", secret=True)

    @field_validator("age_recipients")
    @classmethod
    def check_recipients(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                parse_recipients(value)  # the backup's own rule
            except EncryptionConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("age_identity_file")
    @classmethod
    def check_identity_file(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        if value is not None:
            try:
                load_identities(value.get_secret_value())  # its message names neither the path nor the key
            except EncryptionConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def check_encryption_has_recipients(self) -> "BackupVariables":
        if self.encryption == "age" and not self.age_recipients:
            raise ValueError("LOYALTY_BACKUP_ENCRYPTION is 'age' but LOYALTY_BACKUP_AGE_RECIPIENTS is not set; example: "
                             "LOYALTY_BACKUP_AGE_RECIPIENTS=age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p")
        if self.age_recipients and self.encryption != "age":
            raise ValueError("LOYALTY_BACKUP_AGE_RECIPIENTS is set but LOYALTY_BACKUP_ENCRYPTION is not 'age', so backups "
                             "would be written unencrypted; example: LOYALTY_BACKUP_ENCRYPTION=age")
        return self

    @model_validator(mode="after")
    def check_source_has_a_host(self) -> "BackupVariables":
        stray = [alias for name, alias in (
            ("source_port", "LOYALTY_BACKUP_SOURCE_PORT"), ("source_user", "LOYALTY_BACKUP_SOURCE_USER"),
            ("source_password", "LOYALTY_BACKUP_SOURCE_PASSWORD"), ("source_max_lag_s", "LOYALTY_BACKUP_SOURCE_MAX_LAG_S"),
        ) if getattr(self, name) is not None]
        if stray and not self.source_host:
            raise ValueError(
                f"{', '.join(stray)} set but LOYALTY_BACKUP_SOURCE_HOST is not: without it the backup dumps the target; "
                "example: LOYALTY_BACKUP_SOURCE_HOST=db-standby.example.com")
        return self

    @model_validator(mode="after")
    def check_gzip_level(self) -> "BackupVariables":
        if (self.compression or "gzip") == "gzip" and self.compression_level and self.compression_level > 9:
            raise ValueError(
                f"LOYALTY_COMPRESSION_LEVEL must be 1-9 for gzip, got '{self.compression_level}'; example: "
                "LOYALTY_COMPRESSION_LEVEL=1 (or LOYALTY_COMPRESSION=zstd for levels up to 22)")
        return self


class OffsiteVariables(DomainVariables):
    """The offsite copy on S3 and boto3's own settings."""

    bucket: Optional[str] = variable(
        "LOYALTY_S3_BUCKET", "Bucket of the offsite copy; unset: no offsite copy.", "loyalty-offsite",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: Optional[str] = variable("LOYALTY_S3_PREFIX", "Key prefix (default backups/).", "backups/")
    sse: Optional[str] = variable(
        "LOYALTY_S3_SSE", "Server-side encryption: AES256 (default) or aws:kms.", "aws:kms")
    kms_key_id: Optional[str] = variable("LOYALTY_S3_KMS_KEY_ID", "KMS key of aws:kms.", "alias/loyalty-backups")
    storage_class: Optional[str] = variable(
        "LOYALTY_S3_STORAGE_CLASS", "S3 storage class (default STANDARD).", "STANDARD_IA")
    endpoint_url: Optional[str] = variable(
        "AWS_ENDPOINT_URL", "S3-compatible endpoint (boto3's default: AWS).", "https://s3.eu-west-1.amazonaws.com")
    region: Optional[str] = variable("AWS_REGION", "Region (boto3's default).", "eu-west-1")
    default_region: Optional[str] = variable("AWS_DEFAULT_REGION", "Region when AWS_REGION is unset.", "eu-west-1")
    access_key_id: Optional[SecretStr] = variable("AWS_ACCESS_KEY_ID", "Access key id. Secret.", "AKIA...", secret=True)
    secret_access_key: Optional[SecretStr] = variable(
        "AWS_SECRET_ACCESS_KEY", "Secret access key. Secret.", "...", secret=True)
    session_token: Optional[SecretStr] = variable("AWS_SESSION_TOKEN", "Session token. Secret.", "...", secret=True)

    object_lock_days: Optional[int] = variable(
        "LOYALTY_S3_OBJECT_LOCK_DAYS", "Upload every object with S3 Object Lock retention for this many days (nobody "
        "with ordinary credentials can delete or overwrite it meanwhile); the bucket must have Object Lock enabled. "
        "Unset: no lock.", "35", gt=0, le=36500)
    object_lock_mode: Optional[Literal["GOVERNANCE", "COMPLIANCE"]] = variable(
        "LOYALTY_S3_OBJECT_LOCK_MODE", "GOVERNANCE (default: a role with s3:BypassGovernanceRetention can still "
        "delete) or COMPLIANCE (nobody can, not even the root account, until the date).", "COMPLIANCE")

    @model_validator(mode="after")
    def check_object_lock(self) -> "OffsiteVariables":
        if self.object_lock_mode and not self.object_lock_days:
            raise ValueError("LOYALTY_S3_OBJECT_LOCK_MODE is set but LOYALTY_S3_OBJECT_LOCK_DAYS is not; example: "
                             "LOYALTY_S3_OBJECT_LOCK_DAYS=35")
        if self.object_lock_days and not self.bucket:
            raise ValueError("LOYALTY_S3_OBJECT_LOCK_DAYS is set but LOYALTY_S3_BUCKET is not: there is nothing to "
                             "lock; example: LOYALTY_S3_BUCKET=loyalty-offsite")
        return self

    @field_validator("sse")
    @classmethod
    def check_sse(cls, value: Optional[str]) -> Optional[str]:
        for problem in upload_settings_problems(value, None, "STANDARD") if value is not None else ():
            raise ValueError(problem)  # the backup location's own rule
        return value

    @field_validator("storage_class")
    @classmethod
    def check_storage_class(cls, value: Optional[str]) -> Optional[str]:
        for problem in upload_settings_problems("AES256", None, value) if value is not None else ():
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def check_kms_key(self) -> "OffsiteVariables":
        for problem in upload_settings_problems(self.sse or "AES256", self.kms_key_id, self.storage_class or "STANDARD"):
            raise ValueError(f"{problem} (got LOYALTY_S3_KMS_KEY_ID={self.kms_key_id!r}); example: LOYALTY_S3_SSE=aws:kms")
        return self

    @field_validator("endpoint_url")
    @classmethod
    def check_endpoint_url(cls, value: Optional[str]) -> Optional[str]:
        return require_url(value, ("http", "https"))


class AlertingVariables(DomainVariables):
    """Where pages go and how hard to try (see docs/alerting.md)."""

    webserver_base_url: Optional[str] = variable(
        "LOYALTY_WEBSERVER_BASE_URL", "The Dagster UI as on-call reaches it (default http://localhost:3000).",
        "https://dagster.loyalty.example")
    pagerduty_routing_key: Optional[SecretStr] = variable(
        "LOYALTY_PAGERDUTY_ROUTING_KEY", "Events API v2 integration key; unset: PagerDuty off. Secret.", "...", secret=True)
    pagerduty_events_url: Optional[str] = variable(
        "LOYALTY_PAGERDUTY_EVENTS_URL", "Events endpoint (default https://events.pagerduty.com/v2/enqueue).",
        "https://events.eu.pagerduty.com/v2/enqueue")
    pagerduty_ca_bundle: Optional[str] = variable(
        "LOYALTY_PAGERDUTY_CA_BUNDLE", "CA file of the PagerDuty endpoint (default: the system's).", "/etc/ssl/proxy-ca.pem")
    slack_token: Optional[SecretStr] = variable(
        "LOYALTY_SLACK_TOKEN", "Slack bot token; unset: Slack off. Secret.", "xoxb-...", secret=True)
    slack_channel: Optional[str] = variable("LOYALTY_SLACK_CHANNEL", "Channel (default #loyalty-ops-alerts).", "#db-oncall")
    slack_base_url: Optional[str] = variable(
        "LOYALTY_SLACK_BASE_URL", "Slack Web API base (default https://slack.com/api/).", "https://slack.com/api/")
    webhook_url: Optional[SecretStr] = variable(
        "LOYALTY_ALERT_WEBHOOK_URL", "Receives every trigger/resolve as JSON; unset: off. Secret.", "https://hooks.example/...",
        secret=True)
    page_warn_checks: Optional[bool] = variable(
        "LOYALTY_ALERT_PAGE_WARN_CHECKS", "Page on failed WARN checks too (default true).", "false")
    delivery_attempts: Optional[int] = variable(
        "LOYALTY_ALERT_DELIVERY_ATTEMPTS", "Tries per message per tick (default 3).", "3", gt=0)
    retry_backoff_seconds: Optional[float] = positive_number(
        "LOYALTY_ALERT_RETRY_BACKOFF_SECONDS", "Pause before the 2nd try, doubled after (default 2).", "2")
    connect_timeout_seconds: Optional[float] = positive_number(
        "LOYALTY_ALERT_CONNECT_TIMEOUT_SECONDS", "Time one delivery may take to connect (default 3).", "3")
    read_timeout_seconds: Optional[float] = positive_number(
        "LOYALTY_ALERT_READ_TIMEOUT_SECONDS", "Time one delivery may wait for the answer (default 5).", "5")
    tick_budget_seconds: Optional[float] = positive_number(
        "LOYALTY_ALERT_TICK_BUDGET_SECONDS", "Time one sensor tick may spend delivering (default 20, at most 50).",
        "20", le=50)

    @field_validator("webserver_base_url", "slack_base_url")
    @classmethod
    def check_urls(cls, value: Optional[str]) -> Optional[str]:
        return require_url(value, ("http", "https"))

    @field_validator("pagerduty_events_url")
    @classmethod
    def check_events_url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            split_pagerduty_events_url(value)  # the notifier's own rule; its ValueError names the variable
        return value


class RetentionVariables(DomainVariables):
    """How long backups, offsite copies and logs are kept (see docs/retention.md)."""

    keep_days: Optional[float] = positive_number("LOYALTY_RETENTION_KEEP_DAYS", "Keep every backup younger (default 30).", "30")
    min_keep: Optional[int] = variable(
        "LOYALTY_RETENTION_MIN_KEEP", "The floor: newest N verified backups always kept (default 3, at least 1).", "3", ge=1)
    gfs_daily: Optional[int] = variable("LOYALTY_RETENTION_GFS_DAILY", "GFS days (default 0 = off).", "7", ge=0)
    gfs_weekly: Optional[int] = variable("LOYALTY_RETENTION_GFS_WEEKLY", "GFS ISO weeks (default 0 = off).", "4", ge=0)
    gfs_monthly: Optional[int] = variable("LOYALTY_RETENTION_GFS_MONTHLY", "GFS months (default 0 = off).", "12", ge=0)
    log_dir: Optional[str] = variable("LOYALTY_LOG_DIR", "Directory whose *.log files are cleaned; unset: untouched.", "/var/log/loyalty")
    log_keep_days: Optional[float] = positive_number(
        "LOYALTY_RETENTION_LOG_KEEP_DAYS", "Delete *.log files older than this (default 30).", "30")
    multipart_max_age_hours: Optional[float] = positive_number(
        "LOYALTY_RETENTION_MULTIPART_MAX_AGE_HOURS", "Abort incomplete uploads older than this (default 24).", "24")
    max_backup_age_hours: Optional[float] = variable(
        "LOYALTY_RETENTION_MAX_BACKUP_AGE_HOURS", "Delete nothing when the newest backup is older (default 48; 0 off).",
        "48", ge=0, allow_inf_nan=False)
    drill_required_for_newest: Optional[bool] = variable(
        "LOYALTY_RETENTION_DRILL_REQUIRED_FOR_NEWEST", "The newest backup must have passed a drill (default true).", "false")
    history_limit: Optional[int] = variable(
        "LOYALTY_RETENTION_HISTORY_LIMIT", "Records read from the instance (default 400).", "400", gt=0)
    dry_run: Optional[bool] = variable("LOYALTY_RETENTION_DRY_RUN", "Default of retention_cleanup's dry_run (false).", "true")


class RestoreVariables(DomainVariables):
    """Restore drills and restores (see docs/restore.md)."""

    drill_every_n_backups: Optional[str] = variable(
        DRILL_EVERY_ENV, "Drill every Nth backup: 1 every backup (default), 7 every seventh, 0 never.", "7")
    drill_jobs: Optional[int] = variable("LOYALTY_DRILL_JOBS", "pg_restore -j of the drill (default 2).", "2", ge=1)
    work_dir: Optional[str] = variable(
        "LOYALTY_RESTORE_WORK_DIR", "Downloads and decompressed archives (default LOYALTY_BACKUP_DIR).", "/var/tmp/loyalty-restore")
    tmp_dir: Optional[str] = variable(
        "LOYALTY_RESTORE_TMP_DIR", "The decompressed archive of a restore or drill with jobs > 1 (default "
        "LOYALTY_RESTORE_WORK_DIR, else LOYALTY_BACKUP_DIR).", "/mnt/scratch/loyalty-restore")
    drill_placement: Optional[Literal["production", "server", "scratch"]] = variable(
        "LOYALTY_DRILL_PLACEMENT", "Where the drill restores: production (default), server (LOYALTY_DRILL_HOST), or "
        "scratch (a PostgreSQL of the backup's version started on this machine for the drill).", "scratch")
    drill_host: Optional[str] = variable(
        "LOYALTY_DRILL_HOST", "The drill server's host (placement server; setting it alone implies server).", "staging-db.internal")
    drill_port: Optional[int] = variable("LOYALTY_DRILL_PORT", "The drill server's port (default 5432).", "5432", **PORT)
    drill_user: Optional[str] = variable("LOYALTY_DRILL_USER", "Role on the drill server (needs CREATEDB).", "loyalty_drill")
    drill_password: Optional[SecretStr] = variable(
        "LOYALTY_DRILL_PASSWORD", "Password of LOYALTY_DRILL_USER. Secret.", "...", secret=True)
    drill_sslmode: Optional[Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]] = variable(
        "LOYALTY_DRILL_SSLMODE", "libpq sslmode for the drill server (default PGSSLMODE's).", "verify-full")
    drill_scratch_dir: Optional[str] = variable(
        "LOYALTY_DRILL_SCRATCH_DIR", "Where the scratch server's data directory goes (placement scratch; default the "
        "system's temporary directory).", "/var/tmp/loyalty-drill")

    @field_validator("drill_every_n_backups")
    @classmethod
    def check_drill_every(cls, value: Optional[str]) -> Optional[str]:
        try:
            parse_drill_every(value)  # the drill's own rule
        except RestoreConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def check_drill_placement(self) -> "RestoreVariables":
        if self.drill_placement == "server" and not self.drill_host:
            raise ValueError("LOYALTY_DRILL_PLACEMENT is 'server' but LOYALTY_DRILL_HOST is not set; example: "
                             "LOYALTY_DRILL_HOST=staging-db.internal")
        if self.drill_placement in ("production", "scratch") and self.drill_host:
            raise ValueError(f"LOYALTY_DRILL_HOST is set but LOYALTY_DRILL_PLACEMENT is '{self.drill_placement}', which "
                             "does not use it; example: LOYALTY_DRILL_PLACEMENT=server (or unset LOYALTY_DRILL_HOST)")
        return self

    @property
    def placement(self) -> str:
        """production, server or scratch: LOYALTY_DRILL_HOST alone means server."""
        return self.drill_placement or ("server" if self.drill_host else "production")


class MaintenanceVariables(DomainVariables):
    """What the Sunday maintenance schedule does (see docs/maintenance.md)."""

    mode: Optional[Literal["smart", "full"]] = variable(
        "LOYALTY_MAINTENANCE_MODE", "smart (default) or full (the guide's VACUUM ANALYZE + REINDEX DATABASE).", "full")
    full_reindex: Optional[Literal["database", "concurrently"]] = variable(
        "LOYALTY_MAINTENANCE_FULL_REINDEX", "Full mode: REINDEX DATABASE (default) or each index concurrently.", "concurrently")
    lock_timeout_s: Optional[float] = positive_number(
        "LOYALTY_MAINTENANCE_LOCK_TIMEOUT_S", "Longest any statement waits for a lock (default 2).", "5")


class ReportsVariables(DomainVariables):
    """Application health endpoints (see docs/reports.md)."""

    api_url: Optional[str] = variable("LOYALTY_API_URL", "Base URL of the API; unset: not checked.", "http://localhost:8080")
    redis_url: Optional[SecretStr] = variable(
        "LOYALTY_REDIS_URL", "redis:// URL of the cache (may carry a password); unset: not checked. Secret.",
        "redis://:password@cache:6379/0", secret=True)
    health_timeout_s: Optional[float] = positive_number(
        "LOYALTY_HEALTH_TIMEOUT_S", "Seconds before an endpoint counts as unreachable (default 5).", "5")

    @field_validator("api_url")
    @classmethod
    def check_api_url(cls, value: Optional[str]) -> Optional[str]:
        return require_url(value, ("http", "https"))

    @field_validator("redis_url")
    @classmethod
    def check_redis_url(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        if value is not None:
            require_url(value.get_secret_value(), ("redis", "rediss", "unix"))
        return value


class ContainerVariables(DomainVariables):
    """The morning container checks and the Docker engine (see docs/docker.md)."""

    compose_project: Optional[str] = variable(
        "LOYALTY_COMPOSE_PROJECT", "Compose project whose containers are checked; unset (with LOYALTY_CONTAINERS "
        "unset): no container checks.", "loyalty")
    containers: Optional[str] = variable(
        "LOYALTY_CONTAINERS", "Container names to check, comma separated.", "loyalty-db-prod,loyalty-api-prod")
    docker_host: Optional[str] = variable(
        "DOCKER_HOST", "Docker API address for the docker runner and the checks (default unix:///var/run/docker.sock).",
        "unix:///var/run/docker.sock")

    @field_validator("docker_host")
    @classmethod
    def check_docker_host(cls, value: Optional[str]) -> Optional[str]:
        return require_url(value, ("unix", "tcp", "ssh", "npipe", "http", "https"))

    @property
    def configured(self) -> bool:
        return bool(self.compose_project or self.containers)


class PitrVariables(DomainVariables):
    """Point-in-time recovery: WAL archiving and base backups through barman-cloud (see docs/pitr.md)."""

    enabled: bool = variable(
        "LOYALTY_PITR_ENABLED", "Archive health, base backups and the PITR drill run (default false); needs "
        "LOYALTY_S3_BUCKET.", "true", default=False)
    prefix: Optional[str] = variable("LOYALTY_PITR_PREFIX", "Key prefix of WAL and base backups (default pitr/).", "pitr/")
    server_name: Optional[str] = variable(
        "LOYALTY_PITR_SERVER_NAME", "The engine's server name under the prefix (default: the database name).", "loyalty")
    max_lag_seconds: Optional[float] = positive_number(
        "LOYALTY_PITR_MAX_LAG_SECONDS", "Page when the oldest WAL not in the bucket is older (default 300).", "300")
    archive_timeout_seconds: Optional[int] = variable(
        "LOYALTY_PITR_ARCHIVE_TIMEOUT_SECONDS", "archive_timeout of the generated server settings (default 60).", "60",
        ge=1, le=3600)
    recovery_window_days: Optional[int] = variable(
        "LOYALTY_PITR_RECOVERY_WINDOW_DAYS", "Keep what recovers any point this many days back (default 30).", "30", ge=1)
    base_backup_cron: Optional[str] = variable(
        "LOYALTY_PITR_BASE_BACKUP_CRON", "When weekly_base_backup_schedule runs, Africa/Harare (default '0 1 * * 0').",
        "0 1 * * *")
    barman_bin_dir: Optional[str] = variable(
        "LOYALTY_PITR_BARMAN_BIN_DIR", "Directory of barman-cloud-* as the PostgreSQL OS user runs them (archive_command, "
        "restore_command); default: this installation's.", "/usr/local/bin")
    work_dir: Optional[str] = variable(
        "LOYALTY_PITR_WORK_DIR", "Where the drill's scratch instance lives (default: the system temp dir).", "/var/tmp/loyalty-pitr")
    instance_settings: Optional[str] = variable(
        "LOYALTY_PITR_INSTANCE_SETTINGS", "Server settings of the PITR drill's scratch instance, and of "
        "pitr_restore_job's new instance unless its server_settings says otherwise, over the source's configuration "
        "(default: none; NAME=VALUE,...; an empty value sets it empty).", "shared_buffers=1GB,huge_pages=off")
    wal_compression: Optional[Literal["zstd", "lz4", "gzip", "snappy", "none"]] = variable(
        "LOYALTY_PITR_WAL_COMPRESSION", "How archive_command compresses each WAL segment (default zstd; zstd, lz4 and "
        "snappy need their Python library beside the engine on the server).", "zstd")
    wal_compression_level: Optional[int] = variable(
        "LOYALTY_PITR_WAL_COMPRESSION_LEVEL", "Its level: zstd 1-22 (default 1), lz4 0-16 (default 0), gzip 1-9 "
        "(default 1).", "1")
    archive_nice: Optional[int] = variable(
        "LOYALTY_PITR_ARCHIVE_NICE", "CPU priority (nice 0-19) of the engine process archive_command starts per "
        "segment; default 10 (the server's own backends come first).", "10", ge=0, le=19)
    server_wal_compression: Optional[Literal["lz4", "zstd", "pglz", "off"]] = variable(
        "LOYALTY_PITR_SERVER_WAL_COMPRESSION", "The server's wal_compression in the generated settings (default lz4; "
        "lz4 and zstd need PostgreSQL 15): full-page images compressed, less WAL to archive.", "lz4")
    base_backup_compression: Optional[Literal["lz4", "gzip", "snappy", "none"]] = variable(
        "LOYALTY_PITR_BASE_BACKUP_COMPRESSION", "How barman-cloud-backup compresses a base backup (default lz4; its "
        "gzip is level 9 on one core).", "lz4")
    base_backup_jobs: Optional[int] = variable(
        "LOYALTY_PITR_BASE_BACKUP_JOBS", "Upload processes of a base backup (barman-cloud-backup -J; default 2).", "2",
        ge=1, le=32)

    @model_validator(mode="before")
    @classmethod
    def check_bucket_when_enabled(cls, values: Any) -> Any:
        enabled = isinstance(values, dict) and str(values.get("LOYALTY_PITR_ENABLED", "")).strip().lower() in (
            "1", "true", "yes", "on")
        if enabled and not values.get("LOYALTY_S3_BUCKET"):
            raise ValueError("LOYALTY_PITR_ENABLED is true but LOYALTY_S3_BUCKET is not set: WAL and base backups go to "
                             "that bucket; example: LOYALTY_S3_BUCKET=loyalty-offsite")
        return values

    @field_validator("prefix")
    @classmethod
    def check_prefix(cls, value: Optional[str]) -> Optional[str]:
        return _pitr_rule(normalise_prefix, value)

    @field_validator("server_name")
    @classmethod
    def check_server(cls, value: Optional[str]) -> Optional[str]:
        return _pitr_rule(check_server_name, value)

    @field_validator("instance_settings")
    @classmethod
    def check_instance_settings(cls, value: Optional[str]) -> Optional[str]:
        return _pitr_rule(lambda v: parse_instance_settings(v, "LOYALTY_PITR_INSTANCE_SETTINGS"), value)

    @field_validator("base_backup_cron")
    @classmethod
    def check_base_backup_cron(cls, value: Optional[str]) -> Optional[str]:
        return _pitr_rule(check_cron, value)

    @model_validator(mode="after")
    def check_wal_compression_level(self) -> "PitrVariables":
        try:
            check_wal_compression(self.wal_compression, self.wal_compression_level)  # the PITR library's own rule
        except PitrConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


def _pitr_rule(rule: Any, value: Optional[str]) -> Optional[str]:
    if value is not None:
        try:
            rule(value)  # the PITR library's own rule; its message names the variable
        except PitrConfigError as exc:
            raise ValueError(str(exc)) from None
    return value


DOMAINS: dict[str, type[DomainVariables]] = {
    "postgres": PostgresVariables,
    "backups": BackupVariables,
    "offsite": OffsiteVariables,
    "alerting": AlertingVariables,
    "retention": RetentionVariables,
    "restore": RestoreVariables,
    "maintenance": MaintenanceVariables,
    "reports": ReportsVariables,
    "containers": ContainerVariables,
    "pitr": PitrVariables,
}

# Read by the Dagster instance (dagster.yaml), not by the code location: listed here so the table is whole.
INSTANCE_VARIABLES = ("DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")

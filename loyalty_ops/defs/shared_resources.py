"""The resources every domain shares (``postgres``, ``backup_storage``, ``offsite``), built from the
validated settings. A setting that is unset is not passed, so the resource's own default applies; secrets
are passed as ``dg.EnvVar`` references (resolved at run time, shown by name only)."""

from __future__ import annotations

from typing import Any

from dagster_aws.s3 import S3Resource

from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.defs.settings import LoyaltySettings, secret_ref


def without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def postgres_target(settings: LoyaltySettings) -> PostgresTarget:
    pg = settings.postgres
    return PostgresTarget(
        **without_none(
            {
                "database_url": secret_ref("LOYALTY_DATABASE_URL", pg.database_url),
                "host": pg.host,
                "port": pg.port,
                "user": pg.user,
                "password": secret_ref("PGPASSWORD", pg.password),
                "database": pg.database,
                "sslmode": pg.sslmode,
                "connect_timeout": pg.connect_timeout,
                "libpq_settings": pg.libpq_settings() or None,
                "runner": pg.runner or ("docker" if pg.container else None),
                "container": pg.container,
                "docker_host": settings.containers.docker_host,
                "container_pghost": pg.container_pghost,
                "container_pgport": pg.container_pgport,
                "container_user": pg.container_user,
                "pg_bin_dir": pg.pg_bin_dir,
            }
        )
    )


def backup_storage(settings: LoyaltySettings) -> BackupStorage:
    backups = settings.backups
    return BackupStorage(
        **without_none(
            {
                "backup_dir": backups.backup_dir,
                "compression": backups.compression,
                "compression_level": backups.compression_level,
                "encryption": backups.encryption,
                "age_recipients": backups.age_recipients,
                "age_identity_file": secret_ref("LOYALTY_BACKUP_AGE_IDENTITY_FILE", backups.age_identity_file),
                "row_counts": backups.row_counts,
                "max_rate_mbps": backups.max_rate_mbps,
                "nice": backups.nice,
                "source_host": backups.source_host,
                "source_port": backups.source_port,
                "source_user": backups.source_user,
                "source_password": secret_ref("LOYALTY_BACKUP_SOURCE_PASSWORD", backups.source_password),
                "source_max_lag_s": backups.source_max_lag_s,
            }
        )
    )


def s3_resource(settings: LoyaltySettings) -> S3Resource:
    offsite = settings.offsite
    return S3Resource(
        **without_none(
            {
                "endpoint_url": offsite.endpoint_url,
                "region_name": offsite.region or offsite.default_region,
                "aws_access_key_id": secret_ref("AWS_ACCESS_KEY_ID", offsite.access_key_id),
                "aws_secret_access_key": secret_ref("AWS_SECRET_ACCESS_KEY", offsite.secret_access_key),
                "aws_session_token": secret_ref("AWS_SESSION_TOKEN", offsite.session_token),
                "max_attempts": 5,
            }
        )
    )


def offsite_storage(settings: LoyaltySettings) -> OffsiteStorage:
    offsite = settings.offsite
    return OffsiteStorage(
        s3=s3_resource(settings),
        **without_none(
            {
                "bucket": offsite.bucket,
                "prefix": offsite.prefix,
                "sse": offsite.sse,
                "kms_key_id": offsite.kms_key_id,
                "storage_class": offsite.storage_class,
                "object_lock_days": offsite.object_lock_days,
                "object_lock_mode": offsite.object_lock_mode,
            }
        ),
    )


def shared_resources(settings: LoyaltySettings) -> dict[str, Any]:
    """Every shared resource, keyed by the name assets ask for."""
    return {
        "postgres": postgres_target(settings),
        "backup_storage": backup_storage(settings),
        "offsite": offsite_storage(settings),
    }

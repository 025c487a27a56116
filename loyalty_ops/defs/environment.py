"""The one place that turns the process environment into resources.

Non-secret settings are read here; secrets (passwords, keys, URLs that may carry a password) are passed
as ``dg.EnvVar`` so Dagster resolves them at run time and the UI shows the variable's name, never its
value. A variable that is unset is simply not passed, so the resource's default applies.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import dagster as dg
from dagster_aws.s3 import S3Resource

from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget


def _secret(name: str, environ: Mapping[str, str]) -> Optional[dg.EnvVar]:
    return dg.EnvVar(name) if environ.get(name) else None


def _plain(name: str, environ: Mapping[str, str]) -> Optional[str]:
    return environ.get(name) or None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def postgres_target(environ: Mapping[str, str] = os.environ) -> PostgresTarget:
    port = _plain("PGPORT", environ)
    return PostgresTarget(
        **_drop_none(
            {
                "database_url": _secret("LOYALTY_DATABASE_URL", environ),
                "host": _plain("PGHOST", environ),
                "port": int(port) if port and port.isdigit() else None,
                "user": _plain("PGUSER", environ),
                "password": _secret("PGPASSWORD", environ),
                "database": _plain("PGDATABASE", environ),
                "sslmode": _plain("PGSSLMODE", environ),
                "runner": _plain("LOYALTY_PG_RUNNER", environ) or ("docker" if environ.get("LOYALTY_DB_CONTAINER") else None),
                "container": _plain("LOYALTY_DB_CONTAINER", environ),
                "docker_host": _plain("DOCKER_HOST", environ),
                "pg_bin_dir": _plain("LOYALTY_PG_BIN_DIR", environ),
            }
        )
    )


def backup_storage(environ: Mapping[str, str] = os.environ) -> BackupStorage:
    level = _plain("LOYALTY_COMPRESSION_LEVEL", environ)
    return BackupStorage(
        **_drop_none(
            {
                "backup_dir": _plain("LOYALTY_BACKUP_DIR", environ),
                "compression": _plain("LOYALTY_COMPRESSION", environ),
                "compression_level": int(level) if level else None,
            }
        )
    )


def s3_resource(environ: Mapping[str, str] = os.environ) -> S3Resource:
    return S3Resource(
        **_drop_none(
            {
                "endpoint_url": _plain("AWS_ENDPOINT_URL", environ),
                "region_name": _plain("AWS_REGION", environ) or _plain("AWS_DEFAULT_REGION", environ),
                "aws_access_key_id": _secret("AWS_ACCESS_KEY_ID", environ),
                "aws_secret_access_key": _secret("AWS_SECRET_ACCESS_KEY", environ),
                "aws_session_token": _secret("AWS_SESSION_TOKEN", environ),
                "max_attempts": 5,
            }
        )
    )


def offsite_storage(environ: Mapping[str, str] = os.environ) -> OffsiteStorage:
    return OffsiteStorage(
        s3=s3_resource(environ),
        **_drop_none(
            {
                "bucket": _plain("LOYALTY_S3_BUCKET", environ),
                "prefix": _plain("LOYALTY_S3_PREFIX", environ),
                "sse": _plain("LOYALTY_S3_SSE", environ),
                "kms_key_id": _plain("LOYALTY_S3_KMS_KEY_ID", environ),
                "storage_class": _plain("LOYALTY_S3_STORAGE_CLASS", environ),
            }
        ),
    )


def target_database_name(environ: Mapping[str, str] = os.environ) -> str:
    """The name of the database the jobs work on (LOYALTY_DATABASE_URL's, else PGDATABASE, else loyalty)."""
    from loyalty_ops.lib.pg.connection import ConnectionConfigError, ConnectionSpec

    try:
        return ConnectionSpec.from_environment(environ).dbname
    except ConnectionConfigError:
        return environ.get("PGDATABASE") or "loyalty"  # the run itself reports the bad setting


def backup_max_age_hours(environ: Mapping[str, str] = os.environ) -> float:
    """How old the newest backup may get before its freshness fails and on-call is paged (default 26 h)."""
    value = environ.get("LOYALTY_BACKUP_MAX_AGE_HOURS") or "26"
    try:
        hours = float(value)
    except ValueError:
        raise ValueError(f"LOYALTY_BACKUP_MAX_AGE_HOURS must be a number of hours, got {value!r}") from None
    if hours <= 1:
        raise ValueError(f"LOYALTY_BACKUP_MAX_AGE_HOURS must be more than 1, got {value!r}")
    return hours


def resources_from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Every shared resource, keyed by the name assets ask for."""
    return {
        "postgres": postgres_target(environ),
        "backup_storage": backup_storage(environ),
        "offsite": offsite_storage(environ),
    }

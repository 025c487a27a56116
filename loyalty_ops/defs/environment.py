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


def env_secret(name: str, environ: Mapping[str, str]) -> Optional[dg.EnvVar]:
    """A secret: passed as an EnvVar reference (resolved at run time, shown by name only), when set."""
    return dg.EnvVar(name) if environ.get(name) else None


def env_plain(name: str, environ: Mapping[str, str]) -> Optional[str]:
    """A non-secret setting, or None when unset or blank (the resource's default applies)."""
    value = (environ.get(name) or "").strip()
    return value or None


def env_number(name: str, environ: Mapping[str, str], kind: type = float) -> Any:
    """A positive number, or None when unset; a bad value names the variable and shows an example."""
    value = env_plain(name, environ)
    if value is None:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}; example: {name}=26") from None
    if number <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    return number


def env_flag(name: str, environ: Mapping[str, str]) -> Optional[bool]:
    value = env_plain(name, environ)
    if value is None:
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def postgres_target(environ: Mapping[str, str] = os.environ) -> PostgresTarget:
    from loyalty_ops.lib.pg.connection import libpq_passthrough, parse_connect_timeout

    port = env_plain("PGPORT", environ)
    if port is not None and not port.isdigit():
        raise ValueError(f"PGPORT must be a number, got {port!r}; example: PGPORT=5432")
    return PostgresTarget(
        **without_none(
            {
                "database_url": env_secret("LOYALTY_DATABASE_URL", environ),
                "host": env_plain("PGHOST", environ),
                "port": int(port) if port else None,
                "user": env_plain("PGUSER", environ),
                "password": env_secret("PGPASSWORD", environ),
                "database": env_plain("PGDATABASE", environ),
                "sslmode": env_plain("PGSSLMODE", environ),
                "connect_timeout": parse_connect_timeout(env_plain("PGCONNECT_TIMEOUT", environ)),
                "libpq_settings": libpq_passthrough(environ) or None,
                "runner": env_plain("LOYALTY_PG_RUNNER", environ) or ("docker" if environ.get("LOYALTY_DB_CONTAINER") else None),
                "container": env_plain("LOYALTY_DB_CONTAINER", environ),
                "docker_host": env_plain("DOCKER_HOST", environ),
                "pg_bin_dir": env_plain("LOYALTY_PG_BIN_DIR", environ),
            }
        )
    )


def backup_storage(environ: Mapping[str, str] = os.environ) -> BackupStorage:
    level = env_plain("LOYALTY_COMPRESSION_LEVEL", environ)
    return BackupStorage(
        **without_none(
            {
                "backup_dir": env_plain("LOYALTY_BACKUP_DIR", environ),
                "compression": env_plain("LOYALTY_COMPRESSION", environ),
                "compression_level": int(level) if level else None,
            }
        )
    )


def s3_resource(environ: Mapping[str, str] = os.environ) -> S3Resource:
    return S3Resource(
        **without_none(
            {
                "endpoint_url": env_plain("AWS_ENDPOINT_URL", environ),
                "region_name": env_plain("AWS_REGION", environ) or env_plain("AWS_DEFAULT_REGION", environ),
                "aws_access_key_id": env_secret("AWS_ACCESS_KEY_ID", environ),
                "aws_secret_access_key": env_secret("AWS_SECRET_ACCESS_KEY", environ),
                "aws_session_token": env_secret("AWS_SESSION_TOKEN", environ),
                "max_attempts": 5,
            }
        )
    )


def offsite_storage(environ: Mapping[str, str] = os.environ) -> OffsiteStorage:
    return OffsiteStorage(
        s3=s3_resource(environ),
        **without_none(
            {
                "bucket": env_plain("LOYALTY_S3_BUCKET", environ),
                "prefix": env_plain("LOYALTY_S3_PREFIX", environ),
                "sse": env_plain("LOYALTY_S3_SSE", environ),
                "kms_key_id": env_plain("LOYALTY_S3_KMS_KEY_ID", environ),
                "storage_class": env_plain("LOYALTY_S3_STORAGE_CLASS", environ),
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
    hours = env_number("LOYALTY_BACKUP_MAX_AGE_HOURS", environ, float) or 26.0
    if hours <= 1:
        raise ValueError(f"LOYALTY_BACKUP_MAX_AGE_HOURS must be more than 1 hour, got {hours!r}")
    return hours


def resources_from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Every shared resource, keyed by the name assets ask for."""
    return {
        "postgres": postgres_target(environ),
        "backup_storage": backup_storage(environ),
        "offsite": offsite_storage(environ),
    }

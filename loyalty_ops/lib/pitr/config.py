"""The database server's archiving settings, generated from the PITR settings: what to put in
``postgresql.conf`` (or run as ``ALTER SYSTEM``), the ``restore_command`` recovery uses, and the change the
guide's docker-compose database service needs (the engine in the image, the environment it reads)."""

from __future__ import annotations

from typing import Mapping, Sequence

from loyalty_ops.lib.pitr.engine import S3Access, archive_command
from loyalty_ops.lib.pitr.location import PitrLocation
from loyalty_ops.lib.pitr.options import ArchiveOptions

ENGINE_PIN = "barman[cloud]==3.19.1"

AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


def server_settings(server_bin_dir: str, location: PitrLocation, access: S3Access, archive_timeout_s: int,
                    options: ArchiveOptions = ArchiveOptions()) -> dict[str, str]:
    """The settings that turn continuous archiving on (``archive_mode`` needs a restart, the rest a reload)."""
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": archive_command(server_bin_dir, location, access, options),
        "archive_timeout": f"{int(archive_timeout_s)}s",
        "wal_compression": options.server_wal_compression,
    }


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def postgresql_conf(settings: Mapping[str, str], restore_cmd: str) -> str:
    lines = ["# Continuous WAL archiving to S3 through barman-cloud (loyalty_ops PITR).",
             "# archive_mode needs a restart; the AWS keys come from the server's environment, never from here."]
    lines += [f"{name} = {_quote(value)}" for name, value in settings.items()]
    lines += ["", "# Used by a recovering instance only (pitr_restore_job writes it there itself):",
              f"# restore_command = {_quote(restore_cmd)}"]
    return "\n".join(lines) + "\n"


def alter_system_sql(settings: Mapping[str, str]) -> str:
    lines = [f"ALTER SYSTEM SET {name} = {_quote(value)};" for name, value in settings.items()]
    return "\n".join(lines + ["-- then restart the server (archive_mode), e.g. docker compose restart db"]) + "\n"


def engine_install(packages: Sequence[str] = ()) -> str:
    """The pip arguments that install the engine with the compression libraries it needs."""
    return " ".join(f"'{p}'" for p in (ENGINE_PIN, *packages))


def compose_change(settings: Mapping[str, str], image: str = "postgres:15", packages: Sequence[str] = ()) -> str:
    """The guide's docker-compose ``db`` service with the engine installed (and the compression library the
    archive_command needs, ``packages``) and archiving on."""
    commands = "\n".join(f"      - -c\n      - {name}={value}" for name, value in settings.items())
    env = "\n".join(f"      {name}: ${{{name}}}" for name in AWS_VARIABLES)
    return f"""# docker/db/Dockerfile: the engine must be where archive_command runs, inside the database container
FROM {image}
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \\
 && python3 -m venv /opt/barman && /opt/barman/bin/pip install {engine_install(packages)} \\
 && ln -s /opt/barman/bin/barman-cloud-* /usr/local/bin/ && rm -rf /var/lib/apt/lists/*

# docker-compose.yml, the db service (archive_command is run by the server, so it gets the AWS environment):
  db:
    build: ./docker/db
    container_name: loyalty-db-prod
    environment:
{env}
    command:
      - postgres
{commands}
"""

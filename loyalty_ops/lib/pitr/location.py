"""Where PITR data lives in the bucket, in barman-cloud's own layout:

    s3://BUCKET/PREFIX/SERVER/base/<backup id>/{backup.info,data.tar[.gz]}
    s3://BUCKET/PREFIX/SERVER/wals/<timeline + log id>/<segment>[.gz|.zst|...]

and the rules for the prefix and the server name (checked when the settings load)."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PITR_PREFIX = "pitr/"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_SERVER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class PitrConfigError(ValueError):
    """A PITR setting that cannot work; the message names the variable and gives an example."""


def normalise_prefix(prefix: str) -> str:
    """``/pitr/`` -> ``pitr``; refuses what would not be a clean key prefix."""
    value = (prefix or "").strip().strip("/")
    if value.startswith("s3:") or not _PREFIX_RE.match(value):
        raise PitrConfigError(
            f"LOYALTY_PITR_PREFIX must be a key prefix of letters, digits, '.', '_', '-' and '/', got {prefix!r}; "
            "example: LOYALTY_PITR_PREFIX=pitr/"
        )
    return value


def check_server_name(name: str) -> str:
    if not _SERVER_RE.match(name or ""):
        raise PitrConfigError(
            f"LOYALTY_PITR_SERVER_NAME must be 1-63 letters, digits, '.', '_' or '-', got {name!r}; "
            "example: LOYALTY_PITR_SERVER_NAME=loyalty"
        )
    return name


@dataclass(frozen=True)
class PitrLocation:
    bucket: str
    prefix: str  # normalised: no leading or trailing slash
    server_name: str

    @classmethod
    def of(cls, bucket: str, prefix: str, server_name: str) -> "PitrLocation":
        return cls(bucket, normalise_prefix(prefix), check_server_name(server_name))

    @property
    def url(self) -> str:
        """barman-cloud's destination/source URL."""
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def server_prefix(self) -> str:
        return f"{self.prefix}/{self.server_name}/"

    @property
    def wal_prefix(self) -> str:
        return f"{self.server_prefix}wals/"

    @property
    def base_prefix(self) -> str:
        return f"{self.server_prefix}base/"

    def describe(self) -> str:
        return f"{self.url}/{self.server_name}"


_CRON_FIELD = re.compile(r"^[0-9*/,\-A-Za-z]+$")


def check_cron(value: str) -> str:
    """Five cron fields (minute hour day-of-month month day-of-week), as the schedules use."""
    fields = (value or "").split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise PitrConfigError(
            f"LOYALTY_PITR_BASE_BACKUP_CRON must be five cron fields (minute hour day month weekday), got {value!r}; "
            "example: LOYALTY_PITR_BASE_BACKUP_CRON='0 1 * * 0' (Sundays 01:00) or '0 1 * * *' (nightly)"
        )
    return " ".join(fields)

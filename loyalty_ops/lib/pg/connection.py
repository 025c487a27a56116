"""Connection settings for the target database, read the way libpq users expect.

A :class:`ConnectionSpec` is built from a ``postgresql://`` URL or from libpq's own ``PG*`` variables. It
never puts the password on a command line: tools get it through their environment (``PGPASSWORD``), and
``redacted()`` is the only form that goes into logs and metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_DATABASE = "loyalty"

# libpq variables passed through to tools and drivers as they are (password handled separately).
_LIBPQ_PASSTHROUGH = (
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGCONNECT_TIMEOUT",
    "PGAPPNAME",
    "PGTARGETSESSIONATTRS",
    "PGOPTIONS",
)


class ConnectionConfigError(ValueError):
    """A connection setting is malformed; the message names the setting and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ConnectionSpec:
    """Where and how to reach one PostgreSQL database. ``password`` is never shown by ``repr``."""

    host: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    dbname: str = DEFAULT_DATABASE
    sslmode: Optional[str] = None
    connect_timeout: int = 10
    extra_env: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_url(cls, url: str, *, field_name: str = "LOYALTY_DATABASE_URL") -> "ConnectionSpec":
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ConnectionConfigError(
                f"{field_name} must start with postgresql:// (got scheme {parts.scheme or 'none'!r}); "
                "example: postgresql://user:password@db.example.com:5432/loyalty"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise ConnectionConfigError(f"{field_name} has an invalid port: {exc}; use host:5432") from None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        dbname = unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE
        return cls(
            host=unquote(parts.hostname) if parts.hostname else query.get("host"),
            port=port or (int(query["port"]) if "port" in query else None),
            user=unquote(parts.username) if parts.username else query.get("user"),
            password=unquote(parts.password) if parts.password else query.get("password"),
            dbname=dbname,
            sslmode=query.get("sslmode"),
            connect_timeout=int(query.get("connect_timeout", 10)),
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> "ConnectionSpec":
        """``LOYALTY_DATABASE_URL`` if set, otherwise libpq's ``PG*`` variables (database defaults to loyalty)."""
        extra = {k: environ[k] for k in _LIBPQ_PASSTHROUGH if environ.get(k)}
        if environ.get("LOYALTY_DATABASE_URL"):
            return dataclasses.replace(cls.from_url(environ["LOYALTY_DATABASE_URL"]), extra_env=extra)
        port = environ.get("PGPORT")
        if port is not None and not port.isdigit():
            raise ConnectionConfigError(f"PGPORT must be a number, got {port!r}; example: PGPORT=5432")
        return cls(
            host=environ.get("PGHOST") or None,
            port=int(port) if port else None,
            user=environ.get("PGUSER") or None,
            password=environ.get("PGPASSWORD") or None,
            dbname=environ.get("PGDATABASE") or DEFAULT_DATABASE,
            sslmode=environ.get("PGSSLMODE") or None,
            extra_env=extra,
        )

    def with_database(self, dbname: str) -> "ConnectionSpec":
        return dataclasses.replace(self, dbname=dbname)

    def libpq_env(self) -> dict[str, str]:
        """Environment variables that make libpq tools (pg_dump, psql, ...) connect here, password included."""
        env = dict(self.extra_env)
        pairs = {
            "PGHOST": self.host,
            "PGPORT": str(self.port) if self.port else None,
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.dbname,
            "PGSSLMODE": self.sslmode,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
        }
        env.update({k: v for k, v in pairs.items() if v})
        return env

    def psycopg_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``psycopg.connect``."""
        kwargs: dict[str, object] = {"dbname": self.dbname, "connect_timeout": self.connect_timeout}
        for key in ("host", "port", "user", "password", "sslmode"):
            value = getattr(self, key)
            if value:
                kwargs[key] = value
        kwargs["application_name"] = "loyalty_ops"
        return kwargs

    def redacted(self) -> str:
        """A description safe for logs, events and metadata: never includes the password."""
        user = f"{self.user}@" if self.user else ""
        host = self.host or "(local socket)"
        port = f":{self.port}" if self.port else ""
        return f"postgresql://{user}{host}{port}/{self.dbname}"

"""Connection settings for the target database, read the way libpq users expect.

A :class:`ConnectionSpec` is built from a ``postgresql://`` URL or from libpq's own settings (which the
settings layer reads from the ``PG*`` variables and hands over as plain values). It
never puts the password on a command line: tools get it through their environment (``PGPASSWORD``) or a
passfile, and ``redacted()`` is the only form that goes into logs and metadata.

The tools (pg_dump, pg_restore, psql: :meth:`ConnectionSpec.libpq_env`) and the driver (psycopg:
:meth:`ConnectionSpec.psycopg_kwargs`) are given the same settings from the same spec, explicitly: TLS
files, passfile, service, options and application name included. Neither relies on what happens to be in
the process environment, so they cannot disagree about where and how to connect.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_DATABASE = "loyalty"

# libpq variables passed through to tools and drivers as they are (password and timeout handled apart),
# with the connection-string keyword psycopg is given for each (None: environment only, e.g. the
# service file's location, which libpq reads from the environment for the driver too).
LIBPQ_PASSTHROUGH: dict[str, Optional[str]] = {
    "PGSSLROOTCERT": "sslrootcert",
    "PGSSLCERT": "sslcert",
    "PGSSLKEY": "sslkey",
    "PGSSLCRL": "sslcrl",
    "PGPASSFILE": "passfile",
    "PGSERVICE": "service",
    "PGSERVICEFILE": None,
    "PGAPPNAME": "application_name",
    "PGTARGETSESSIONATTRS": "target_session_attrs",
    "PGOPTIONS": "options",
}
DEFAULT_APPLICATION_NAME = "loyalty_ops"


def parse_connect_timeout(value: Optional[str], field_name: str = "PGCONNECT_TIMEOUT") -> int:
    if value is None or value == "":
        return 10
    if not value.strip().isdigit() or int(value) <= 0:
        raise ConnectionConfigError(f"{field_name} must be a whole number of seconds, got {value!r}; example: {field_name}=10")
    return int(value)


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
            connect_timeout=parse_connect_timeout(query.get("connect_timeout"), f"{field_name}'s connect_timeout"),
            extra_env={
                env: query[keyword] for env, keyword in LIBPQ_PASSTHROUGH.items() if keyword and query.get(keyword)
            },
        )

    def with_database(self, dbname: str) -> "ConnectionSpec":
        return dataclasses.replace(self, dbname=dbname)

    def libpq_env(self) -> dict[str, str]:
        """Environment variables that make libpq tools (pg_dump, psql, ...) connect here, password included."""
        env = {"PGAPPNAME": DEFAULT_APPLICATION_NAME, **self.extra_env}
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
        """Keyword arguments for ``psycopg.connect``: the same settings the tools get from :meth:`libpq_env`."""
        kwargs: dict[str, object] = {
            "dbname": self.dbname,
            "connect_timeout": self.connect_timeout,
            "application_name": DEFAULT_APPLICATION_NAME,
        }
        for env_name, keyword in LIBPQ_PASSTHROUGH.items():
            if keyword and self.extra_env.get(env_name):
                kwargs[keyword] = self.extra_env[env_name]
        for key in ("host", "port", "user", "password", "sslmode"):
            value = getattr(self, key)
            if value:
                kwargs[key] = value
        return kwargs

    def passfile_password(self) -> Optional[str]:
        """The password libpq would take from the passfile (``PGPASSFILE``, else ``~/.pgpass``) for this target."""
        path = self.extra_env.get("PGPASSFILE") or os.path.expanduser("~/.pgpass")
        return password_from_passfile(path, self.host, self.port, self.dbname, self.user)

    def redacted(self) -> str:
        """A description safe for logs, events and metadata: never includes the password."""
        user = f"{self.user}@" if self.user else ""
        host = self.host or "(local socket)"
        port = f":{self.port}" if self.port else ""
        return f"postgresql://{user}{host}{port}/{self.dbname}"


def _passfile_fields(line: str) -> list[str]:
    """Split one passfile line on unescaped colons (libpq's ``\\:`` and ``\\\\`` escapes)."""
    fields, current, escaped = [], [], False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def password_from_passfile(
    path: str, host: Optional[str], port: Optional[int], dbname: str, user: Optional[str]
) -> Optional[str]:
    """The password of the first matching ``hostname:port:database:username:password`` line, as libpq reads
    it (``*`` matches anything; a socket directory or no host matches ``localhost``). None when no line
    matches or the file cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    wanted_host = "localhost" if not host or host.startswith("/") else host
    wanted = (wanted_host, str(port or 5432), dbname, user or getpass.getuser())
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = _passfile_fields(raw)
        if len(fields) != 5:
            continue
        if all(field in ("*", value) for field, value in zip(fields[:4], wanted)):
            return fields[4]
    return None

"""Replaying a ``pg_dumpall --globals-only`` script onto a server without changing what is already there.

The script says ``CREATE ROLE app; ALTER ROLE app WITH ... PASSWORD '...';``: run as is on a server that
already has ``app`` (or the ``postgres`` superuser every cluster has), the ``ALTER`` would reset that role's
attributes and password. So the script is split into statements and each is judged by what it changes:

- statements about a role (``CREATE``/``ALTER``/``COMMENT ON``/``SECURITY LABEL ... ON ROLE``) run only for
  roles this restore creates; an existing role is left exactly as it is and reported;
- a membership (``GRANT role TO member``) runs only when the member is created by this restore;
- tablespace statements run only for tablespaces this restore creates;
- ``SET`` lines run; psql meta-commands (``\\restrict``) and comments are dropped;
- anything else is refused as unknown, so nothing unexpected runs against a production server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_ROLE_STATEMENT = re.compile(rf"^(?:CREATE ROLE|ALTER ROLE|COMMENT ON ROLE|SECURITY LABEL (?:FOR {_IDENT} )?ON ROLE) ({_IDENT})")
_MEMBERSHIP = re.compile(rf"^GRANT {_IDENT}(?:, {_IDENT})* TO ({_IDENT})(?: WITH [A-Z ]+ OPTION)?(?: GRANTED BY {_IDENT})?$")
_TABLESPACE_STATEMENT = re.compile(
    rf"^(?:CREATE TABLESPACE|ALTER TABLESPACE|COMMENT ON TABLESPACE|(?:GRANT|REVOKE) .+ ON TABLESPACE|"
    rf"SECURITY LABEL (?:FOR {_IDENT} )?ON TABLESPACE) ({_IDENT})"
)


class GlobalsScriptError(ValueError):
    """The globals script holds something this tool does not know how to replay safely."""


def unquote(identifier: str) -> str:
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def split_statements(script: str) -> list[str]:
    """The SQL statements of a pg_dumpall script, without comment lines and psql meta-commands. Quotes
    (``'...'`` and ``"..."``, doubled to escape) are respected: a ``;`` inside a string ends nothing."""
    statements: list[str] = []
    buf: list[str] = []
    quote: Optional[str] = None
    for line in script.splitlines(keepends=True):
        if quote is None and not "".join(buf).strip():
            stripped = line.lstrip()
            if not stripped or stripped.startswith("--") or stripped.startswith("\\"):
                buf = []
                continue
        i = 0
        while i < len(line):
            c = line[i]
            buf.append(c)
            if quote is not None:
                if c == quote:
                    if i + 1 < len(line) and line[i + 1] == quote:
                        buf.append(line[i + 1])
                        i += 2
                        continue
                    quote = None
            elif c in ("'", '"'):
                quote = c
            elif c == ";":
                statements.append("".join(buf).strip())
                buf = []
            i += 1
    rest = "".join(buf).strip()
    if rest:
        raise GlobalsScriptError(f"the globals script ends inside a statement: {rest[:80]!r}")
    return statements


@dataclass
class GlobalsPlan:
    """What replaying a globals script will do on this server, decided before anything runs."""

    statements: list[str] = field(default_factory=list)  # to run, in order
    created_roles: list[str] = field(default_factory=list)
    existing_roles: list[str] = field(default_factory=list)  # in the script and already here: left alone
    created_tablespaces: list[str] = field(default_factory=list)
    existing_tablespaces: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # statements not run, each with why

    def summary(self) -> str:
        text = f"{len(self.created_roles)} role(s) created ({', '.join(self.created_roles) or 'none'})"
        if self.existing_roles:
            text += f"; {len(self.existing_roles)} already existed and were left as they are ({', '.join(self.existing_roles)})"
        if self.created_tablespaces:
            text += f"; tablespaces created: {', '.join(self.created_tablespaces)}"
        if self.existing_tablespaces:
            text += f"; tablespaces already there, left alone: {', '.join(self.existing_tablespaces)}"
        return text


def plan_globals(script: str, roles_here: set[str], tablespaces_here: set[str]) -> GlobalsPlan:
    """Judge every statement of ``script`` against the roles and tablespaces this server already has."""
    plan = GlobalsPlan()
    for statement in split_statements(script):
        body = statement.rstrip(";").strip()
        one_line = " ".join(body.split())
        if one_line.upper().startswith("SET "):
            plan.statements.append(statement)
            continue
        role = _ROLE_STATEMENT.match(one_line)
        if role:
            name = unquote(role.group(1))
            if one_line.startswith("CREATE ROLE "):
                (plan.existing_roles if name in roles_here else plan.created_roles).append(name)
            if name in plan.created_roles:
                if " IN DATABASE " in one_line:  # the database is not there yet; its role settings come with it
                    plan.skipped.append(f"{one_line[:120]}: applied with the database's properties instead")
                else:
                    plan.statements.append(statement)
            else:
                plan.skipped.append(f"{_redact(one_line)}: role {name} already exists and is left as it is")
            continue
        membership = _MEMBERSHIP.match(one_line)
        if membership and " ON " not in one_line:
            member = unquote(membership.group(1))
            if member in plan.created_roles:
                plan.statements.append(statement)
            else:
                plan.skipped.append(f"{one_line}: {member} already existed, its memberships are left as they are")
            continue
        tablespace = _TABLESPACE_STATEMENT.match(one_line)
        if tablespace:
            name = unquote(tablespace.group(1))
            if one_line.startswith("CREATE TABLESPACE "):
                (plan.existing_tablespaces if name in tablespaces_here else plan.created_tablespaces).append(name)
            if name in plan.created_tablespaces:
                plan.statements.append(statement)
            else:
                plan.skipped.append(f"{one_line[:120]}: tablespace {name} already exists and is left as it is")
            continue
        raise GlobalsScriptError(
            f"the globals script holds a statement this restore does not replay: {_redact(one_line)[:200]!r}; "
            "restore the roles by hand (gunzip -c FILE | psql) and run the restore in mode new_database"
        )
    return plan


def _redact(statement: str) -> str:
    """A statement for a log line: a password (hash) never leaves."""
    return re.sub(r"PASSWORD '(?:[^']|'')*'", "PASSWORD '***'", statement)

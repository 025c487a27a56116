"""The one place where the code location reads the environment: every variable is read here, typed and
validated, once, when the definitions load; everything else receives plain values.

The variables, by domain, with type, default and meaning: :mod:`loyalty_ops.defs.settings.variables`.

One policy for a bad value: loading the code location is refused with one error that lists *every* bad
variable, each with its name, the bad value (never a secret's) and a good example. Dagster shows a
code-location load error in the UI (Deployment -> Code locations), so no run starts, and no step touches
the database or the bucket, with a setting that cannot work. Secrets (passwords, keys, tokens, URLs that
may carry a password) are passed on as ``dg.EnvVar`` references only: Dagster resolves them at run time,
and the UI, run config and logs show the variable's name.

Why pydantic models (and not pydantic-settings or Dagster's ``EnvVar`` fields): pydantic is already here
with Dagster; one ``model_validate`` per domain types every value and reports all errors together with their
variable, which is what the one-error policy needs. pydantic-settings would add a dependency for the same
validation plus ``.env`` loading we do not want, and its errors would still need rewording to keep secrets
out. ``EnvVar`` fields are resolved when a run starts: a bad number would then fail a run at 02:00 instead
of the load, and they give no place to validate or document a value.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable, Mapping, Optional

import dagster as dg
from pydantic import BaseModel, ConfigDict, ValidationError

from loyalty_ops.defs.settings.variables import (
    DOMAINS,
    AlertingVariables,
    BackupVariables,
    ContainerVariables,
    DomainVariables,
    MaintenanceVariables,
    OffsiteVariables,
    PitrVariables,
    PostgresVariables,
    ReportsVariables,
    RestoreVariables,
    RetentionVariables,
)
from loyalty_ops.lib.alerting.scrub import secret_values


class SettingsError(ValueError):
    """One or more environment variables are malformed; the message lists each with an example."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        count = f"{len(problems)} environment variable{'s are' if len(problems) > 1 else ' is'} invalid"
        super().__init__(f"loyalty_ops cannot load: {count}. Fix and reload the code location:\n- " + "\n- ".join(problems))


class LoyaltySettings(BaseModel):
    """Every variable of the code location, typed and validated, by domain."""

    model_config = ConfigDict(frozen=True)

    postgres: PostgresVariables
    backups: BackupVariables
    offsite: OffsiteVariables
    alerting: AlertingVariables
    retention: RetentionVariables
    restore: RestoreVariables
    maintenance: MaintenanceVariables
    reports: ReportsVariables
    containers: ContainerVariables
    pitr: PitrVariables


def every_variable() -> dict[str, tuple[type[DomainVariables], str]]:
    """Every variable's name, with the domain model and field that read it."""
    return {
        field.validation_alias: (model, name)  # type: ignore[misc]
        for model in DOMAINS.values()
        for name, field in model.model_fields.items()
    }


def is_secret(model: type[DomainVariables], field_name: str) -> bool:
    extra = model.model_fields[field_name].json_schema_extra
    return bool(isinstance(extra, dict) and extra.get("secret"))


def example_of(model: type[DomainVariables], field_name: str) -> str:
    extra = model.model_fields[field_name].json_schema_extra
    return str(extra.get("example")) if isinstance(extra, dict) else ""


_RULES = {
    "float_parsing": "must be a number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "finite_number": "must be a finite number",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must be 3-63 lowercase letters, digits, dots or hyphens",
}


def describe_error(model: type[DomainVariables], error: Mapping[str, Any]) -> str:
    """One bad variable in one line: name, rule, value (unless secret) and an example."""
    if not error["loc"]:  # a rule across variables: its message names them
        return str(error["ctx"]["error"]) if "ctx" in error and "error" in error["ctx"] else error["msg"]
    alias = str(error["loc"][0])
    field_name = next(n for n, f in model.model_fields.items() if f.validation_alias == alias)
    if error["type"] == "value_error":
        rule = str(error["ctx"]["error"])
    else:
        bounds = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
        rule = _RULES.get(error["type"], error["msg"][:1].lower() + error["msg"][1:]).format(**bounds)
    if rule.startswith(alias):  # a lib rule's own message already names the variable and the value
        rule = rule[len(alias):].lstrip(" :")
        if is_secret(model, field_name):
            rule = rule.split(", got ")[0]
    shown = " (value not shown: secret)" if is_secret(model, field_name) else f", got {error['input']!r}"
    line = f"{alias} {rule}" if "got " in rule else f"{alias} {rule}{shown}"
    return line if "example" in line or "e.g." in line else f"{line}; example: {alias}={example_of(model, field_name)}"


def present_values(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables this code location reads that are set and not blank (surrounding spaces removed)."""
    values = {}
    for name in every_variable():
        value = environ.get(name)
        if value is not None and value.strip():
            values[name] = value.strip()
    return values


def load_settings(environ: Mapping[str, str]) -> LoyaltySettings:
    """Every variable from ``environ``, validated. Raises :class:`SettingsError` listing every bad one."""
    values = present_values(environ)
    domains: dict[str, DomainVariables] = {}
    problems: list[str] = []
    for key, model in DOMAINS.items():
        try:
            domains[key] = model.model_validate(values)
        except ValidationError as exc:
            problems.extend(describe_error(model, error) for error in exc.errors())
    if problems:
        raise SettingsError(problems) from None
    return LoyaltySettings(**domains)


@functools.lru_cache(maxsize=1)
def current_settings() -> LoyaltySettings:
    """The process environment's settings, read once per process (at definitions load)."""
    return load_settings(os.environ)


def secret_ref(name: str, value: Optional[object]) -> Optional[dg.EnvVar]:
    """A secret that is set, as an ``EnvVar`` reference (resolved at run time, shown by name only)."""
    return dg.EnvVar(name) if value is not None else None


# Passed to the PostgreSQL tools' processes: what a program needs to run (search path, home, locale,
# temporary directory, time zone), and nothing else of ours. libpq settings come from the connection spec.
TOOL_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")


def tool_base_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The base environment of the host's PostgreSQL tools: :data:`TOOL_ENVIRONMENT` and ``LC_*``."""
    return {k: v for k, v in environ.items() if k in TOOL_ENVIRONMENT or k.startswith("LC_")}


def process_secret_values(extra: Iterable[Optional[str]] = ()) -> list[str]:
    """Every secret value this process knows (variables named like secrets, passwords inside URLs) and
    ``extra``: what alert payloads are scrubbed of."""
    return secret_values(os.environ, extra)


__all__ = [
    "LoyaltySettings", "SettingsError", "current_settings", "every_variable", "load_settings",
    "process_secret_values", "secret_ref", "tool_base_environment",
]

"""The alerting resource from the process environment. Secrets are passed as ``dg.EnvVar`` (resolved at
run time, shown by name in the UI) and only when set, so an unset variable leaves the default."""

import os
from typing import Any, Mapping, Optional

import dagster as dg

from loyalty_ops.defs.alerting.resources import AlertingResource, AlertSlack

ENV_VARS = {
    "LOYALTY_WEBSERVER_BASE_URL": "webserver_base_url",
    "LOYALTY_PAGERDUTY_ROUTING_KEY": "pagerduty_routing_key (secret)",
    "LOYALTY_PAGERDUTY_EVENTS_URL": "pagerduty_events_url",
    "LOYALTY_PAGERDUTY_CA_BUNDLE": "pagerduty_ca_bundle",
    "LOYALTY_SLACK_TOKEN": "slack.token (secret; Slack is on when set)",
    "LOYALTY_SLACK_CHANNEL": "slack.channel",
    "LOYALTY_SLACK_BASE_URL": "slack.base_url",
    "LOYALTY_ALERT_WEBHOOK_URL": "webhook_url (secret)",
    "LOYALTY_BACKUP_MAX_AGE_HOURS": "backup_max_age_hours",
    "LOYALTY_ALERT_DELIVERY_ATTEMPTS": "delivery_attempts",
    "LOYALTY_ALERT_RETRY_BACKOFF_SECONDS": "retry_backoff_seconds",
    "LOYALTY_ALERT_PAGE_WARN_CHECKS": "page_warn_checks",
}


def _plain(name: str, environ: Mapping[str, str]) -> Optional[str]:
    value = environ.get(name, "").strip()
    return value or None


def _secret(name: str, environ: Mapping[str, str]) -> Optional[dg.EnvVar]:
    return dg.EnvVar(name) if environ.get(name) else None


def _number(name: str, environ: Mapping[str, str], kind: type) -> Any:
    value = _plain(name, environ)
    if value is None:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}; example: {name}=26") from None
    if number <= 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    return number


def _flag(name: str, environ: Mapping[str, str]) -> Optional[bool]:
    value = _plain(name, environ)
    if value is None:
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def alerting_resource(environ: Mapping[str, str] = os.environ) -> AlertingResource:
    slack = None
    if environ.get("LOYALTY_SLACK_TOKEN"):
        slack_fields = {
            "channel": _plain("LOYALTY_SLACK_CHANNEL", environ),
            "base_url": _plain("LOYALTY_SLACK_BASE_URL", environ),
        }
        slack = AlertSlack(token=dg.EnvVar("LOYALTY_SLACK_TOKEN"), **{k: v for k, v in slack_fields.items() if v})
    fields = {
        "webserver_base_url": _plain("LOYALTY_WEBSERVER_BASE_URL", environ),
        "pagerduty_routing_key": _secret("LOYALTY_PAGERDUTY_ROUTING_KEY", environ),
        "pagerduty_events_url": _plain("LOYALTY_PAGERDUTY_EVENTS_URL", environ),
        "pagerduty_ca_bundle": _plain("LOYALTY_PAGERDUTY_CA_BUNDLE", environ),
        "slack": slack,
        "webhook_url": _secret("LOYALTY_ALERT_WEBHOOK_URL", environ),
        "backup_max_age_hours": _number("LOYALTY_BACKUP_MAX_AGE_HOURS", environ, float),
        "delivery_attempts": _number("LOYALTY_ALERT_DELIVERY_ATTEMPTS", environ, int),
        "retry_backoff_seconds": _number("LOYALTY_ALERT_RETRY_BACKOFF_SECONDS", environ, float),
        "page_warn_checks": _flag("LOYALTY_ALERT_PAGE_WARN_CHECKS", environ),
    }
    return AlertingResource(**{k: v for k, v in fields.items() if v is not None})

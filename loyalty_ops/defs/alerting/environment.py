"""The alerting resource from the process environment. Secrets are passed as ``dg.EnvVar`` (resolved at
run time, shown by name in the UI) and only when set, so an unset variable leaves the default."""

import os
from typing import Mapping

import dagster as dg

from loyalty_ops.defs.alerting.resources import AlertingResource, AlertSlack
from loyalty_ops.defs.environment import env_flag, env_number, env_plain, env_secret

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
    "LOYALTY_ALERT_CONNECT_TIMEOUT_SECONDS": "connect_timeout_seconds",
    "LOYALTY_ALERT_READ_TIMEOUT_SECONDS": "read_timeout_seconds",
    "LOYALTY_ALERT_TICK_BUDGET_SECONDS": "tick_delivery_budget_seconds",
}


def alerting_resource(environ: Mapping[str, str] = os.environ) -> AlertingResource:
    slack = None
    if environ.get("LOYALTY_SLACK_TOKEN"):
        slack_fields = {
            "channel": env_plain("LOYALTY_SLACK_CHANNEL", environ),
            "base_url": env_plain("LOYALTY_SLACK_BASE_URL", environ),
        }
        slack = AlertSlack(token=dg.EnvVar("LOYALTY_SLACK_TOKEN"), **{k: v for k, v in slack_fields.items() if v})
    fields = {
        "webserver_base_url": env_plain("LOYALTY_WEBSERVER_BASE_URL", environ),
        "pagerduty_routing_key": env_secret("LOYALTY_PAGERDUTY_ROUTING_KEY", environ),
        "pagerduty_events_url": env_plain("LOYALTY_PAGERDUTY_EVENTS_URL", environ),
        "pagerduty_ca_bundle": env_plain("LOYALTY_PAGERDUTY_CA_BUNDLE", environ),
        "slack": slack,
        "webhook_url": env_secret("LOYALTY_ALERT_WEBHOOK_URL", environ),
        "backup_max_age_hours": env_number("LOYALTY_BACKUP_MAX_AGE_HOURS", environ, float),
        "delivery_attempts": env_number("LOYALTY_ALERT_DELIVERY_ATTEMPTS", environ, int),
        "retry_backoff_seconds": env_number("LOYALTY_ALERT_RETRY_BACKOFF_SECONDS", environ, float),
        "page_warn_checks": env_flag("LOYALTY_ALERT_PAGE_WARN_CHECKS", environ),
        "connect_timeout_seconds": env_number("LOYALTY_ALERT_CONNECT_TIMEOUT_SECONDS", environ, float),
        "read_timeout_seconds": env_number("LOYALTY_ALERT_READ_TIMEOUT_SECONDS", environ, float),
        "tick_delivery_budget_seconds": env_number("LOYALTY_ALERT_TICK_BUDGET_SECONDS", environ, float),
    }
    return AlertingResource(**{k: v for k, v in fields.items() if v is not None})

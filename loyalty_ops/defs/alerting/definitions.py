"""Alerting domain definitions: the paging sensors and the ``alerting`` resource built from the settings.
Secrets are passed as ``dg.EnvVar`` (resolved at run time, shown by name in the UI) and only when set, so an
unset variable leaves the resource's default."""

import dagster as dg

from loyalty_ops.defs.alerting.resources import AlertingResource, AlertSlack
from loyalty_ops.defs.alerting.sensors import ALERTING_SENSORS
from loyalty_ops.defs.settings import LoyaltySettings, current_settings, secret_ref


def alerting_resource(settings: LoyaltySettings) -> AlertingResource:
    alerting = settings.alerting
    slack = None
    if alerting.slack_token is not None:
        slack_fields = {"channel": alerting.slack_channel, "base_url": alerting.slack_base_url}
        slack = AlertSlack(token=dg.EnvVar("LOYALTY_SLACK_TOKEN"), **{k: v for k, v in slack_fields.items() if v})
    fields = {
        "webserver_base_url": alerting.webserver_base_url,
        "pagerduty_routing_key": secret_ref("LOYALTY_PAGERDUTY_ROUTING_KEY", alerting.pagerduty_routing_key),
        "pagerduty_events_url": alerting.pagerduty_events_url,
        "pagerduty_ca_bundle": alerting.pagerduty_ca_bundle,
        "slack": slack,
        "webhook_url": secret_ref("LOYALTY_ALERT_WEBHOOK_URL", alerting.webhook_url),
        "backup_max_age_hours": settings.backups.max_age_hours,
        "delivery_attempts": alerting.delivery_attempts,
        "retry_backoff_seconds": alerting.retry_backoff_seconds,
        "page_warn_checks": alerting.page_warn_checks,
        "connect_timeout_seconds": alerting.connect_timeout_seconds,
        "read_timeout_seconds": alerting.read_timeout_seconds,
        "tick_delivery_budget_seconds": alerting.tick_budget_seconds,
    }
    return AlertingResource(**{k: v for k, v in fields.items() if v is not None})


defs = dg.Definitions(sensors=ALERTING_SENSORS, resources={"alerting": alerting_resource(current_settings())})

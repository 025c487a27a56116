"""Alerting domain definitions: the paging sensors and the ``alerting`` resource built from the settings.
Secrets are passed as ``dg.EnvVar`` (resolved at run time, shown by name in the UI) and only when set, so an
unset variable leaves the resource's default."""

import dagster as dg

from loyalty_ops.defs.alerting.dispatch import LEDGER_ASSET_KEY, UNREADABLE_LEDGER_ASSET_KEY
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


# The sensors' shared memory, kept as observations of these keys (see dispatch.py); declared so the asset
# catalog describes them instead of listing keys without a definition.
INCIDENT_LEDGER = dg.AssetSpec(
    LEDGER_ASSET_KEY,
    group_name="alerting",
    owners=["team:platform"],
    kinds={"dagster"},
    description="The paging sensors' ledger: which incidents are open (paged, not yet resolved) and which "
    "messages are queued for a destination that did not answer. Written by the sensors as observations; "
    "`open_incidents` and `queued_messages` plot its history. Nothing to materialize.",
)
UNREADABLE_INCIDENT_LEDGER = dg.AssetSpec(
    UNREADABLE_LEDGER_ASSET_KEY,
    group_name="alerting",
    owners=["team:platform"],
    kinds={"dagster"},
    description="A ledger the sensors could not read, set aside once (for a post-mortem) before they started a new one.",
)

defs = dg.Definitions(
    assets=[INCIDENT_LEDGER, UNREADABLE_INCIDENT_LEDGER],
    sensors=ALERTING_SENSORS,
    resources={"alerting": alerting_resource(current_settings())},
)

"""The alerting resource: where pages go (PagerDuty Events v2, Slack, a JSON webhook) and how hard to try.

Secrets (routing key, Slack token, webhook URL) arrive as ``dg.EnvVar`` from
``loyalty_ops.defs.alerting.definitions``; the UI shows the variable names only.
"""

from typing import Callable, Iterable, Optional

import dagster as dg
from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk import WebClient

from loyalty_ops.lib.alerting.delivery import DeliveryBudget
from loyalty_ops.lib.alerting.notifiers import (
    DEFAULT_PAGERDUTY_EVENTS_URL,
    DeliveryTimeouts,
    Notifier,
    PagerDutyNotifier,
    SlackNotifier,
    WebhookNotifier,
)
from loyalty_ops.defs.settings import process_secret_values
from loyalty_ops.lib.alerting.scrub import scrub_text

DEFAULT_WEBSERVER_BASE_URL = "http://localhost:3000"


class AlertSlack(SlackResource):
    """dagster-slack's ``SlackResource`` with the channel to post to and a configurable API base URL
    (a proxy, or a test server on 127.0.0.1)."""

    channel: str = Field(default="#loyalty-ops-alerts", description="Channel for alerts (LOYALTY_SLACK_CHANNEL).")
    base_url: str = Field(default=WebClient.BASE_URL, description="Slack Web API base URL (LOYALTY_SLACK_BASE_URL).")
    timeout_seconds: int = Field(default=10, description="HTTP timeout of one Slack call.")

    def get_client(self) -> WebClient:
        # retry_handlers=[]: retries are the alerting resource's single policy (delivery_attempts).
        return WebClient(token=self.token, base_url=self.base_url, timeout=self.timeout_seconds, retry_handlers=[])


class AlertingResource(dg.ConfigurableResource):
    """Destinations and policy for pages. Any combination of destinations may be configured; with none,
    incidents are still tracked and logged by the sensors."""

    webserver_base_url: str = Field(
        default=DEFAULT_WEBSERVER_BASE_URL,
        description="Base URL of the Dagster UI, for the run link in every page (LOYALTY_WEBSERVER_BASE_URL).",
    )
    pagerduty_routing_key: Optional[str] = Field(
        default=None, description="PagerDuty Events API v2 integration/routing key (LOYALTY_PAGERDUTY_ROUTING_KEY)."
    )
    pagerduty_events_url: str = Field(
        default=DEFAULT_PAGERDUTY_EVENTS_URL,
        description="Events API v2 endpoint, https:// ending in /v2/enqueue (LOYALTY_PAGERDUTY_EVENTS_URL).",
    )
    pagerduty_ca_bundle: Optional[str] = Field(
        default=None, description="CA bundle file for the PagerDuty endpoint, e.g. behind a TLS proxy "
        "(LOYALTY_PAGERDUTY_CA_BUNDLE). Empty uses the system's trust store."
    )
    slack: Optional[AlertSlack] = Field(default=None, description="Slack destination (LOYALTY_SLACK_TOKEN ...).")
    webhook_url: Optional[str] = Field(
        default=None, description="URL that receives every trigger/resolve as JSON (LOYALTY_ALERT_WEBHOOK_URL)."
    )
    delivery_attempts: int = Field(
        default=3, description="Tries per message and tick before it is left queued for the next tick."
    )
    retry_backoff_seconds: float = Field(
        default=2.0, description="Pause before the second try; doubles for each further try."
    )
    connect_timeout_seconds: float = Field(
        default=3.0, gt=0, description="Time one delivery may take to connect, TLS included "
        "(LOYALTY_ALERT_CONNECT_TIMEOUT_SECONDS).",
    )
    read_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Time one delivery may wait for the endpoint's answer; an endpoint that "
        "does not answer is not tried again in the same tick (LOYALTY_ALERT_READ_TIMEOUT_SECONDS).",
    )
    tick_delivery_budget_seconds: float = Field(
        default=20.0, gt=0, le=50, description="Total time one sensor tick may spend delivering (all failed runs "
        "of the tick together); what does not fit stays queued for the next tick. Must stay well under "
        "Dagster's 60 s sensor timeout (LOYALTY_ALERT_TICK_BUDGET_SECONDS).",
    )
    backup_max_age_hours: float = Field(
        default=26.0, description="Page when the newest successful backup is older (LOYALTY_BACKUP_MAX_AGE_HOURS)."
    )
    page_warn_checks: bool = Field(
        default=True, description="Page (at warning) on failed WARN-severity checks too (LOYALTY_ALERT_PAGE_WARN_CHECKS)."
    )
    max_undelivered_age_hours: float = Field(
        default=24.0, description="Give up (with an error in the sensor log) on a message undelivered this long."
    )

    def secret_values(self, extra: Iterable[Optional[str]] = ()) -> list[str]:
        """Every secret this process knows, for scrubbing payloads: this resource's, the environment's
        (PGPASSWORD, AWS_SECRET_ACCESS_KEY, *_TOKEN, LOYALTY_DATABASE_URL, ...) and ``extra``."""
        own = [self.pagerduty_routing_key, self.webhook_url, self.slack.token if self.slack else None]
        return process_secret_values([*own, *extra])

    def delivery_timeouts(self) -> DeliveryTimeouts:
        return DeliveryTimeouts(self.connect_timeout_seconds, self.read_timeout_seconds)

    def delivery_budget(self) -> DeliveryBudget:
        """A fresh budget for one tick; its clock starts now."""
        return DeliveryBudget(self.tick_delivery_budget_seconds)

    def destination_names(self) -> list[str]:
        names = []
        if self.pagerduty_routing_key:
            names.append(PagerDutyNotifier.name)
        if self.slack is not None:
            names.append(SlackNotifier.name)
        if self.webhook_url:
            names.append(WebhookNotifier.name)
        return names

    def notifiers(self, secrets: Iterable[str], on_error: Optional[Callable[[str], None]] = None) -> list[Notifier]:
        """The configured destinations' clients. One that cannot be built (a malformed URL, a missing
        package) is reported through ``on_error`` and left out: its messages stay queued and the other
        destinations still get theirs."""
        secrets = tuple(secrets)
        factories: list[tuple[str, Callable[[], Notifier]]] = []
        if self.pagerduty_routing_key:
            factories.append((
                PagerDutyNotifier.name,
                lambda: PagerDutyNotifier(
                    self.pagerduty_routing_key,
                    self.pagerduty_events_url,
                    ca_bundle=self.pagerduty_ca_bundle,
                    timeouts=self.delivery_timeouts(),
                    secrets=secrets,
                ),
            ))
        if self.slack is not None:
            slack = self.slack
            factories.append((SlackNotifier.name, lambda: SlackNotifier(slack.get_client(), slack.channel, secrets=secrets)))
        if self.webhook_url:
            factories.append((
                WebhookNotifier.name,
                lambda: WebhookNotifier(self.webhook_url, timeouts=self.delivery_timeouts(), secrets=secrets),
            ))
        out: list[Notifier] = []
        for name, factory in factories:
            try:
                out.append(factory())
            except Exception as exc:
                message = scrub_text(f"{name}: cannot set up this destination: {type(exc).__name__}: {exc}", secrets)
                if on_error is not None:
                    on_error(message)
        return out

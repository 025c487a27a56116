"""Destinations for pages, and delivery with retries through the ledger's outbox.

* PagerDuty Events API v2 through PagerDuty's own client (``pagerduty.EventsApiV2Client``): its base URL is
  a constructor argument, so tests and proxies point it elsewhere without patching. (dagster-pagerduty
  wraps ``pypd``, whose events URL is a hard-coded class attribute.)
* Slack through a ``slack_sdk.WebClient`` (the one dagster-slack's ``SlackResource`` builds).
* A generic JSON webhook through ``requests``.

Every body is scrubbed of secrets right before it is sent. Retries are one policy for all destinations
(``attempts`` tries with exponential backoff), the clients' own retry loops are turned down so the
sensor's tick stays bounded. A failure never raises out of :func:`flush_outbox`: the message stays queued
and is tried again on the next flush, after the messages queued before it for the same destination.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence
from urllib.parse import urlsplit

from loyalty_ops.lib.alerting.alerts import Alert, pagerduty_event, slack_message, webhook_body
from loyalty_ops.lib.alerting.incidents import IncidentLedger, PendingDelivery
from loyalty_ops.lib.alerting.scrub import scrub_payload, scrub_text

DEFAULT_PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_PAGERDUTY_ENQUEUE_PATH = "/v2/enqueue"


class DeliveryError(Exception):
    """A destination did not accept a message. The message text is already scrubbed."""


class Logger(Protocol):
    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...
    def error(self, msg: str) -> Any: ...


class Notifier(Protocol):
    name: str

    def send(self, action: str, alert: Alert) -> None:
        """Deliver one trigger or resolve; raise on any failure."""

    def close(self) -> None: ...


def split_pagerduty_events_url(events_url: str) -> str:
    """The client's base URL from a full events URL (``https://host[/prefix]/v2/enqueue``)."""
    parts = urlsplit(events_url)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(
            f"LOYALTY_PAGERDUTY_EVENTS_URL must be an https:// URL ending in {_PAGERDUTY_ENQUEUE_PATH}, "
            f"got {scrub_text(events_url)!r}; default {DEFAULT_PAGERDUTY_EVENTS_URL}"
        )
    path = parts.path.rstrip("/")
    if not path.endswith(_PAGERDUTY_ENQUEUE_PATH):
        raise ValueError(
            f"LOYALTY_PAGERDUTY_EVENTS_URL must end in {_PAGERDUTY_ENQUEUE_PATH} (the Events API v2 "
            f"endpoint), got path {path or '/'!r}; default {DEFAULT_PAGERDUTY_EVENTS_URL}"
        )
    return f"{parts.scheme}://{parts.netloc}{path[: -len(_PAGERDUTY_ENQUEUE_PATH)]}"


class PagerDutyNotifier:
    name = "pagerduty"

    def __init__(
        self,
        routing_key: str,
        events_url: str = DEFAULT_PAGERDUTY_EVENTS_URL,
        *,
        ca_bundle: Optional[str] = None,
        timeout_s: float = 10.0,
        secrets: Iterable[str] = (),
    ):
        import pagerduty  # PagerDuty's maintained client (package ``pagerduty``)

        base_url = split_pagerduty_events_url(events_url)
        kwargs: dict[str, Any] = {}
        if ca_bundle:
            kwargs["verify"] = ssl.create_default_context(cafile=ca_bundle)
        self._client = pagerduty.EventsApiV2Client(routing_key, base_url=base_url, **kwargs)
        self._client.timeout = timeout_s
        # One retry policy for every destination (flush_outbox); the client fails fast instead of sleeping
        # 3-12 s per network error inside a sensor tick. A 429 is retried once after a short pause.
        self._client.max_network_attempts = 0
        self._client.sleep_timer = 0.5
        self._client.retry = {429: 1}
        self._secrets = tuple(secrets) + (routing_key,)

    def send(self, action: str, alert: Alert) -> None:
        import pagerduty

        event = scrub_payload(pagerduty_event(action, alert), self._secrets)
        properties = {k: v for k, v in event.items() if k not in ("event_action", "dedup_key")}
        try:
            self._client.send_event(event["event_action"], dedup_key=event["dedup_key"], **properties)
        except pagerduty.Error as exc:
            raise DeliveryError(scrub_text(f"PagerDuty: {exc}", self._secrets)) from None

    def close(self) -> None:
        self._client.close()


class SlackNotifier:
    name = "slack"

    def __init__(self, client: Any, channel: str, *, secrets: Iterable[str] = ()):
        self._client = client  # slack_sdk.WebClient
        self._channel = channel
        self._secrets = tuple(secrets) + ((client.token,) if getattr(client, "token", None) else ())

    def send(self, action: str, alert: Alert) -> None:
        message = scrub_payload(slack_message(action, alert), self._secrets)
        try:
            response = self._client.chat_postMessage(channel=self._channel, text=message["text"], blocks=message["blocks"])
        except Exception as exc:  # slack_sdk raises SlackApiError, URLError, timeouts ...
            raise DeliveryError(scrub_text(f"Slack: {type(exc).__name__}: {exc}", self._secrets)) from None
        if not response.get("ok", False):
            raise DeliveryError(f"Slack: chat.postMessage answered ok=false ({response.get('error')})")

    def close(self) -> None:
        pass


class WebhookNotifier:
    name = "webhook"

    def __init__(self, url: str, *, timeout_s: float = 10.0, secrets: Iterable[str] = ()):
        import requests

        self._session = requests.Session()
        self._url = url
        self._timeout = timeout_s
        self._secrets = tuple(secrets) + (url,)

    def send(self, action: str, alert: Alert) -> None:
        body = scrub_payload(webhook_body(action, alert), self._secrets)
        try:
            response = self._session.post(self._url, json=body, timeout=self._timeout)
        except Exception as exc:
            raise DeliveryError(scrub_text(f"webhook: {type(exc).__name__}: {exc}", self._secrets)) from None
        if response.status_code >= 300:
            raise DeliveryError(f"webhook answered HTTP {response.status_code}")

    def close(self) -> None:
        self._session.close()


@dataclasses.dataclass
class FlushReport:
    delivered: list[PendingDelivery] = dataclasses.field(default_factory=list)
    failed: list[PendingDelivery] = dataclasses.field(default_factory=list)  # head of line, still queued
    still_queued: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


def deliver_once_with_retries(
    notifier: Notifier,
    item: PendingDelivery,
    *,
    attempts: int,
    backoff_s: float,
    sleep: Callable[[float], None],
    log: Logger,
) -> Optional[str]:
    """Try one message up to ``attempts`` times; None on success, else the last (scrubbed) error."""
    alert = Alert.from_dict(item.alert)
    error: Optional[str] = None
    for attempt in range(1, max(1, attempts) + 1):
        item.attempts += 1
        try:
            notifier.send(item.action, alert)
            return None
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:  # a bug or an unexpected library error must not crash the sensor
            error = scrub_text(f"{notifier.name}: {type(exc).__name__}: {exc}")
        if attempt < attempts:
            delay = backoff_s * (2 ** (attempt - 1))
            log.warning(
                f"{notifier.name}: {item.action} for {alert.dedup_key} failed (attempt {attempt} of {attempts}): "
                f"{error}; retrying in {delay:g} s"
            )
            sleep(delay)
    return error


def flush_outbox(
    ledger: IncidentLedger,
    notifiers: Sequence[Notifier],
    *,
    attempts: int = 3,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Logger,
) -> FlushReport:
    """Deliver queued messages in order, per destination. A destination that still fails after its
    retries keeps that message and everything queued after it for the next flush."""
    report = FlushReport()
    by_name = {n.name: n for n in notifiers}
    blocked: set[str] = set()
    remaining: list[PendingDelivery] = []
    for item in ledger.outbox:
        notifier = by_name.get(item.destination)
        if notifier is None or item.destination in blocked:
            remaining.append(item)
            continue
        error = deliver_once_with_retries(notifier, item, attempts=attempts, backoff_s=backoff_s, sleep=sleep, log=log)
        if error is None:
            report.delivered.append(item)
            log.info(f"{item.destination}: sent {item.action} for {item.alert.get('dedup_key')}")
            continue
        item.last_error = error
        blocked.add(item.destination)
        remaining.append(item)
        report.failed.append(item)
        log.error(
            f"{item.destination}: could not send {item.action} for {item.alert.get('dedup_key')} after "
            f"{attempts} attempt(s): {error}. It stays queued and is retried on the next tick."
        )
    ledger.outbox = remaining
    report.still_queued = len(remaining)
    return report

"""Destinations for pages: what each one receives (the wire payloads) and the notifier that sends it.

* PagerDuty Events API v2 through PagerDuty's own client (``pagerduty.EventsApiV2Client``): its base URL is
  a constructor argument, so tests and proxies point it elsewhere without patching. (dagster-pagerduty
  wraps ``pypd``, whose events URL is a hard-coded class attribute.)
* Slack through a ``slack_sdk.WebClient`` (the one dagster-slack's ``SlackResource`` builds).
* A generic JSON webhook through ``requests``.

Every body is scrubbed of secrets right before it is sent. Every request has a connect and a read
timeout (:class:`DeliveryTimeouts`, given per call so the caller can cut them to its remaining budget), and
a :class:`DeliveryError` says whether the endpoint did not answer in time. The clients' own retry loops
are turned down: retries are one policy for all destinations, in ``loyalty_ops.lib.alerting.delivery``.
"""

from __future__ import annotations

import dataclasses
import ssl
from typing import Any, Iterable, Optional, Protocol
from urllib.parse import urlsplit

from loyalty_ops.lib.alerting.alerts import KIND_RUN_FAILURE, RESOLVE, SOURCE, TRIGGER, Alert, truncate
from loyalty_ops.lib.alerting.scrub import scrub_payload, scrub_text

DEFAULT_PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_PAGERDUTY_ENQUEUE_PATH = "/v2/enqueue"


class DeliveryError(Exception):
    """A destination did not accept a message. The message text is already scrubbed. ``timed_out``: the
    endpoint did not connect or answer within the timeouts (it is not retried in the same tick)."""

    def __init__(self, message: str, *, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


@dataclasses.dataclass(frozen=True)
class DeliveryTimeouts:
    """How long one HTTP request may take to connect (TCP and TLS) and to answer."""

    connect_s: float = 3.0
    read_s: float = 5.0

    def __post_init__(self):
        for name, value in (("connect timeout", self.connect_s), ("read timeout", self.read_s)):
            if not value > 0:
                raise ValueError(f"the alert delivery {name} must be greater than 0 seconds, got {value!r}")

    def within(self, seconds_left: float) -> "DeliveryTimeouts":
        """These timeouts, cut so that one request cannot outlast ``seconds_left``."""
        floor = 0.01
        return DeliveryTimeouts(max(floor, min(self.connect_s, seconds_left)), max(floor, min(self.read_s, seconds_left)))


def is_timeout(exc: BaseException) -> bool:
    """Whether an HTTP client's error (requests, httpx through PagerDuty's client, urllib through
    slack_sdk) is a connect or read timeout, looking through wrapped causes."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TimeoutError) or any("Timeout" in cls.__name__ for cls in type(current).__mro__):
            return True
        todo.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args[:1]])
    return False


def _failure(prefix: str, exc: BaseException, secrets: Iterable[str]) -> DeliveryError:
    return DeliveryError(scrub_text(f"{prefix}: {type(exc).__name__}: {exc}", secrets), timed_out=is_timeout(exc))


class Logger(Protocol):
    def info(self, msg: str) -> Any: ...
    def warning(self, msg: str) -> Any: ...
    def error(self, msg: str) -> Any: ...


class Notifier(Protocol):
    name: str

    def send(self, action: str, alert: Alert, timeouts: Optional[DeliveryTimeouts] = None) -> None:
        """Deliver one trigger or resolve within ``timeouts`` (default: the notifier's own); raise
        :class:`DeliveryError` on any failure."""

    def close(self) -> None: ...


# ---- what each destination receives -------------------------------------------------------------------


def pagerduty_event(action: str, alert: Alert) -> dict[str, Any]:
    """The Events API v2 body without ``routing_key`` (the client adds it). A resolve needs only the key."""
    if action == RESOLVE:
        return {"event_action": RESOLVE, "dedup_key": alert.dedup_key}
    event: dict[str, Any] = {
        "event_action": TRIGGER,
        "dedup_key": alert.dedup_key,
        "payload": {
            "summary": alert.summary,
            "source": f"{SOURCE}:{alert.database}",
            "severity": alert.severity,
            "timestamp": alert.timestamp,
            "component": alert.component,
            "group": alert.database,
            "class": alert.kind,
            "custom_details": dict(alert.details),
        },
        "client": "loyalty_ops (Dagster)",
    }
    if alert.link:
        event["links"] = [{"href": alert.link, "text": alert.link_text}]
        event["client_url"] = alert.link
    return event


_SLACK_ICON = {"critical": ":rotating_light:", "error": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


def slack_message(action: str, alert: Alert) -> dict[str, Any]:
    """``text`` (notifications, fallback) and ``blocks`` for ``chat.postMessage``."""
    if action == RESOLVE:
        head = f":white_check_mark: {alert.summary}"
    else:
        head = f"{_SLACK_ICON.get(alert.severity, ':warning:')} [{alert.severity.upper()}] {alert.summary}"
    link = f"<{alert.link}|{alert.link_text}>" if alert.link else ""
    text = f"{head}\n{link}".strip()
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if action == TRIGGER:
        facts = [
            ("Job" if alert.kind == KIND_RUN_FAILURE else "Component", alert.component),
            ("Database", alert.database),
            ("Severity", alert.severity),
        ]
        step = alert.details.get("failing_step")
        if step:
            facts.append(("Failing step", str(step)))
        blocks.append(
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in facts]}
        )
        error = alert.details.get("error") or alert.details.get("description")
        if error:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{truncate(str(error), 2900)}```"}})
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"dedup key `{alert.dedup_key}`"}]})
    return {"text": text, "blocks": blocks}


def webhook_body(action: str, alert: Alert) -> dict[str, Any]:
    """The generic JSON webhook: one flat document per trigger or resolve."""
    return {
        "version": 1,
        "event_action": action,
        "dedup_key": alert.dedup_key,
        "kind": alert.kind,
        "severity": alert.severity,
        "summary": alert.summary,
        "source": f"{SOURCE}:{alert.database}",
        "component": alert.component,
        "database": alert.database,
        "link": alert.link,
        "timestamp": alert.timestamp,
        "details": dict(alert.details),
    }


# ---- the notifiers that send them ---------------------------------------------------------------------


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
        timeouts: DeliveryTimeouts = DeliveryTimeouts(),
        secrets: Iterable[str] = (),
    ):
        import pagerduty  # PagerDuty's maintained client (package ``pagerduty``)

        base_url = split_pagerduty_events_url(events_url)
        kwargs: dict[str, Any] = {}
        if ca_bundle:
            kwargs["verify"] = ssl.create_default_context(cafile=ca_bundle)
        self._client = pagerduty.EventsApiV2Client(routing_key, base_url=base_url, **kwargs)
        self._timeouts = timeouts
        # One retry policy for every destination (flush_outbox); the client fails fast instead of sleeping
        # 3-12 s per network error inside a sensor tick. A 429 is retried once after a short pause.
        self._client.max_network_attempts = 0
        self._client.sleep_timer = 0.5
        self._client.retry = {429: 1}
        self._secrets = tuple(secrets) + (routing_key,)

    def send(self, action: str, alert: Alert, timeouts: Optional[DeliveryTimeouts] = None) -> None:
        import pagerduty

        timeouts = timeouts or self._timeouts
        # The client's HTTP layer (httpx) takes (connect, read, write, pool): connect covers TCP and the TLS
        # handshake; reading, writing and waiting for a pooled connection get the read timeout.
        self._client.timeout = (timeouts.connect_s, timeouts.read_s, timeouts.read_s, timeouts.read_s)
        event = scrub_payload(pagerduty_event(action, alert), self._secrets)
        properties = {k: v for k, v in event.items() if k not in ("event_action", "dedup_key")}
        try:
            self._client.send_event(event["event_action"], dedup_key=event["dedup_key"], **properties)
        except pagerduty.Error as exc:
            # The client's message hides the network error ("Non-transient network error ..."): name it.
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ is not None else ""
            raise DeliveryError(scrub_text(f"PagerDuty: {exc}{cause}", self._secrets), timed_out=is_timeout(exc)) from None
        except Exception as exc:  # the HTTP layer's own errors (a timeout while reading a redirect ...)
            raise _failure("PagerDuty", exc, self._secrets) from None

    def close(self) -> None:
        self._client.close()


class SlackNotifier:
    name = "slack"

    def __init__(self, client: Any, channel: str, *, secrets: Iterable[str] = ()):
        self._client = client  # slack_sdk.WebClient
        self._channel = channel
        self._secrets = tuple(secrets) + ((client.token,) if getattr(client, "token", None) else ())

    def send(self, action: str, alert: Alert, timeouts: Optional[DeliveryTimeouts] = None) -> None:
        if timeouts is not None:
            # urllib has one timeout for connecting and for each read.
            self._client.timeout = max(timeouts.connect_s, timeouts.read_s)
        message = scrub_payload(slack_message(action, alert), self._secrets)
        try:
            response = self._client.chat_postMessage(channel=self._channel, text=message["text"], blocks=message["blocks"])
        except Exception as exc:  # slack_sdk raises SlackApiError, URLError, timeouts ...
            raise _failure("Slack", exc, self._secrets) from None
        if not response.get("ok", False):
            raise DeliveryError(f"Slack: chat.postMessage answered ok=false ({response.get('error')})")

    def close(self) -> None:
        pass


class WebhookNotifier:
    name = "webhook"

    def __init__(self, url: str, *, timeouts: DeliveryTimeouts = DeliveryTimeouts(), secrets: Iterable[str] = ()):
        import requests

        self._session = requests.Session()
        self._url = url
        self._timeouts = timeouts
        self._secrets = tuple(secrets) + (url,)

    def send(self, action: str, alert: Alert, timeouts: Optional[DeliveryTimeouts] = None) -> None:
        timeouts = timeouts or self._timeouts
        body = scrub_payload(webhook_body(action, alert), self._secrets)
        try:
            response = self._session.post(self._url, json=body, timeout=(timeouts.connect_s, timeouts.read_s))
        except Exception as exc:
            raise _failure("webhook", exc, self._secrets) from None
        if response.status_code >= 300:
            raise DeliveryError(f"webhook answered HTTP {response.status_code}")

    def close(self) -> None:
        self._session.close()

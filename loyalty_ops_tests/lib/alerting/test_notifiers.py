"""Delivery to real HTTP(S) servers on 127.0.0.1: PagerDuty's client, Slack's WebClient, a webhook."""

import time

import pytest
from slack_sdk import WebClient

from loyalty_ops.lib.alerting.alerts import RunFailureFacts, run_failure_alert
from loyalty_ops.lib.alerting.delivery import DeliveryBudget, flush_outbox
from loyalty_ops.lib.alerting.incidents import IncidentLedger
from loyalty_ops.lib.alerting.notifiers import (
    DeliveryTimeouts,
    PagerDutyNotifier,
    SlackNotifier,
    WebhookNotifier,
    split_pagerduty_events_url,
)
from loyalty_ops_tests.lib.alerting.http_recorder import HangingServer, unused_port

ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"


class ListLog:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, msg):
        self.lines.append(("info", msg))

    def warning(self, msg):
        self.lines.append(("warning", msg))

    def error(self, msg):
        self.lines.append(("error", msg))

    def at(self, level):
        return [m for lvl, m in self.lines if lvl == level]


def _alert(secret="Hunter2Pw"):
    facts = RunFailureFacts(
        "nightly_backup_job", "r-1", {"loyalty_ops/severity": "critical", "loyalty_ops/database_lock": "loyalty"},
        1_790_000_000.0, "database_backup", f"pg_dump: password={secret} rejected",
    )
    return run_failure_alert(facts, "http://dagster:3000")


def _pagerduty(server, tls_cert, **kw):
    return PagerDutyNotifier(ROUTING_KEY, f"{server.url}/v2/enqueue", ca_bundle=str(tls_cert[0]), **kw)


def test_events_url_must_be_https_and_end_in_enqueue():
    assert split_pagerduty_events_url("https://events.pagerduty.com/v2/enqueue") == "https://events.pagerduty.com"
    assert split_pagerduty_events_url("https://proxy:8443/pd/v2/enqueue/") == "https://proxy:8443/pd"
    with pytest.raises(ValueError, match="LOYALTY_PAGERDUTY_EVENTS_URL must be an https:// URL"):
        split_pagerduty_events_url("http://127.0.0.1:1/v2/enqueue")
    with pytest.raises(ValueError, match="must end in /v2/enqueue"):
        split_pagerduty_events_url("https://events.pagerduty.com/")


def test_pagerduty_receives_the_exact_event(pagerduty_server, tls_cert):
    notifier = _pagerduty(pagerduty_server, tls_cert)
    notifier.send("trigger", _alert())
    notifier.send("resolve", _alert())
    notifier.close()
    trigger, resolve = pagerduty_server.requests
    assert trigger.path == "/v2/enqueue"
    assert trigger.json == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "loyalty_ops/run/nightly_backup_job/loyalty",
        "payload": {
            "summary": "nightly_backup_job failed on loyalty at step database_backup: pg_dump: password=*** rejected",
            "source": "loyalty_ops:loyalty",
            "severity": "critical",
            "timestamp": "2026-09-21T14:13:20+00:00",
            "component": "nightly_backup_job",
            "group": "loyalty",
            "class": "run_failure",
            "custom_details": {
                "job": "nightly_backup_job",
                "database": "loyalty",
                "run_id": "r-1",
                "run_url": "http://dagster:3000/runs/r-1",
                "failing_step": "database_backup",
                "error": "pg_dump: password=*** rejected",
                "severity": "critical",
                "failed_at": "2026-09-21T14:13:20+00:00",
            },
        },
        "client": "loyalty_ops (Dagster)",
        "links": [{"href": "http://dagster:3000/runs/r-1", "text": "Open the run in Dagster"}],
        "client_url": "http://dagster:3000/runs/r-1",
    }
    assert resolve.json == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "loyalty_ops/run/nightly_backup_job/loyalty"}


def test_slack_and_webhook_receive_the_message(slack_server, webhook_server):
    slack = SlackNotifier(WebClient(token="xoxb-test-token-1", base_url=f"{slack_server.url}/api/", retry_handlers=[]), "#ops")
    slack.send("trigger", _alert())
    (request,) = slack_server.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["authorization"] == "Bearer xoxb-test-token-1"
    body = request.json
    assert body["channel"] == "#ops"
    assert body["text"].startswith(":rotating_light: [CRITICAL] nightly_backup_job failed on loyalty at step database_backup")
    assert "xoxb-test-token-1" not in request.raw.decode()
    webhook = WebhookNotifier(f"{webhook_server.url}/hooks/loyalty?token=hook-secret-1")
    webhook.send("trigger", _alert())
    webhook.close()
    (hook,) = webhook_server.requests
    assert hook.json["event_action"] == "trigger"
    assert hook.json["dedup_key"] == "loyalty_ops/run/nightly_backup_job/loyalty"
    assert hook.json["link"] == "http://dagster:3000/runs/r-1"


def test_unreachable_endpoint_retries_logs_and_keeps_the_message(webhook_server, tls_cert):
    dead = PagerDutyNotifier(ROUTING_KEY, f"https://127.0.0.1:{unused_port()}/v2/enqueue", ca_bundle=str(tls_cert[0]), timeouts=DeliveryTimeouts(2, 2))
    webhook = WebhookNotifier(f"{webhook_server.url}/hook")
    ledger = IncidentLedger()
    ledger.enqueue(["pagerduty", "webhook"], "trigger", _alert(), 0.0)
    ledger.enqueue(["pagerduty", "webhook"], "resolve", _alert(), 1.0)
    sleeps: list[float] = []
    log = ListLog()
    report = flush_outbox(ledger, [dead, webhook], attempts=3, backoff_s=0.5, sleep=sleeps.append, log=log)
    # PagerDuty: the trigger was tried 3 times with backoff, then left queued; the resolve behind it waits.
    assert sleeps == [0.5, 1.0]
    assert [(p.destination, p.action, p.attempts) for p in ledger.outbox] == [("pagerduty", "trigger", 3), ("pagerduty", "resolve", 0)]
    assert "ConnectError" in ledger.outbox[0].last_error or "network error" in ledger.outbox[0].last_error
    assert len(log.at("warning")) == 2
    (error,) = log.at("error")
    assert error.startswith("pagerduty: could not send trigger for loyalty_ops/run/nightly_backup_job/loyalty after 3 attempt(s)")
    # the webhook is independent of PagerDuty's outage
    assert [b["event_action"] for b in webhook_server.bodies()] == ["trigger", "resolve"]
    assert not report.ok and report.still_queued == 2


def test_a_server_error_is_retried_and_then_delivered(pagerduty_server, tls_cert):
    pagerduty_server.fail_next(1, status=503)
    ledger = IncidentLedger()
    ledger.enqueue(["pagerduty"], "trigger", _alert(), 0.0)
    log = ListLog()
    report = flush_outbox(ledger, [_pagerduty(pagerduty_server, tls_cert)], attempts=3, backoff_s=0.01, sleep=lambda s: None, log=log)
    assert report.ok and ledger.outbox == []
    assert [r.json["event_action"] for r in pagerduty_server.requests] == ["trigger", "trigger"]
    assert len(log.at("warning")) == 1 and not log.at("error")


def test_a_hanging_endpoint_costs_one_timeout_not_three_and_its_messages_stay_queued(webhook_server, tls_cert):
    with HangingServer() as hanging:
        pagerduty = PagerDutyNotifier(ROUTING_KEY, f"{hanging.url('https')}/v2/enqueue", ca_bundle=str(tls_cert[0]))
        webhook = WebhookNotifier(f"{hanging.url()}/hook")
        slack = SlackNotifier(WebClient(token="xoxb-test-token-1", base_url=f"{webhook_server.url}/api/", retry_handlers=[]), "#ops")
        ledger = IncidentLedger()
        ledger.enqueue(["pagerduty", "slack", "webhook"], "trigger", _alert(), 0.0)
        ledger.enqueue(["pagerduty", "slack", "webhook"], "resolve", _alert(), 1.0)
        log = ListLog()
        started = time.monotonic()
        report = flush_outbox(ledger, [pagerduty, slack, webhook], attempts=3, backoff_s=0.01,
                              timeouts=DeliveryTimeouts(connect_s=0.5, read_s=0.5), log=log)
        elapsed = time.monotonic() - started
    # one try each for the two hanging endpoints (TLS handshake and HTTP answer never come), no retries
    assert 0.9 < elapsed < 2.0, elapsed
    assert [(p.destination, p.action, p.attempts) for p in ledger.outbox] == [
        ("pagerduty", "trigger", 1), ("webhook", "trigger", 1), ("pagerduty", "resolve", 0), ("webhook", "resolve", 0),
    ]
    assert "Timeout" in ledger.outbox[0].last_error and "Timeout" in ledger.outbox[1].last_error
    errors = log.at("error")
    assert len(errors) == 2 and all("a hanging endpoint is not tried again in this tick" in e for e in errors)
    assert not log.at("warning")  # nothing was retried
    assert [r.path for r in webhook_server.requests] == ["/api/chat.postMessage"] * 2  # Slack got both, unhindered
    assert len(report.failed) == 2 and report.still_queued == 4


def test_the_tick_budget_caps_the_time_and_defers_the_rest_in_order(webhook_server):
    with HangingServer() as hanging:
        webhook = WebhookNotifier(f"{hanging.url()}/hook")
        ledger = IncidentLedger()
        for n in range(3):
            ledger.enqueue(["webhook"], "trigger", _alert(secret=f"pw{n}"), float(n))
        budget = DeliveryBudget(0.6)
        log = ListLog()
        started = time.monotonic()
        first = flush_outbox(ledger, [webhook], timeouts=DeliveryTimeouts(connect_s=5, read_s=5), budget=budget, log=log)
        # a second flush in the same tick (the next failed run) finds the destination already failed
        second = flush_outbox(ledger, [webhook], timeouts=DeliveryTimeouts(connect_s=5, read_s=5), budget=budget, log=log)
        elapsed = time.monotonic() - started
    assert 0.55 < elapsed < 1.2, elapsed  # the 5 s read timeout was cut to the 0.6 s budget
    assert [p.attempts for p in ledger.outbox] == [1, 0, 0] and len(ledger.outbox) == 3
    assert first.still_queued == second.still_queued == 3 and not second.delivered
    # budget spent: a fresh destination would not be tried either, its message is deferred, not dropped
    ledger.enqueue(["slack"], "trigger", _alert(), 9.0)
    slack = SlackNotifier(WebClient(token="xoxb-test-token-1", base_url=f"{webhook_server.url}/api/", retry_handlers=[]), "#ops")
    third = flush_outbox(ledger, [webhook, slack], budget=budget, log=log)
    assert third.deferred == 1 and len(ledger.outbox) == 4 and not webhook_server.requests
    assert any("delivery budget of 0.6 s for this tick is spent" in w for w in log.at("warning"))

"""Delivery to real HTTP(S) servers on 127.0.0.1: PagerDuty's client, Slack's WebClient, a webhook."""

import pytest
from slack_sdk import WebClient

from loyalty_ops.lib.alerting.alerts import RunFailureFacts, run_failure_alert
from loyalty_ops.lib.alerting.incidents import IncidentLedger
from loyalty_ops.lib.alerting.notifiers import (
    PagerDutyNotifier,
    SlackNotifier,
    WebhookNotifier,
    flush_outbox,
    split_pagerduty_events_url,
)
from loyalty_ops_tests.lib.alerting.http_recorder import unused_port

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
    dead = PagerDutyNotifier(ROUTING_KEY, f"https://127.0.0.1:{unused_port()}/v2/enqueue", ca_bundle=str(tls_cert[0]), timeout_s=2)
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

"""A pager endpoint that accepts the connection and never answers costs a sensor tick seconds, not minutes:
three failed runs in one tick of `page_on_run_failure` against a real hanging TCP server on 127.0.0.1,
then the queued pages delivered by `retry_undelivered_alerts` once a working server takes its place."""

import json
import time

import dagster as dg

from loyalty_ops.defs.alerting.dispatch import load_ledger
from loyalty_ops.defs.alerting.definitions import alerting_resource
from loyalty_ops.defs.alerting.resources import AlertingResource, AlertSlack
from loyalty_ops.defs.alerting.sensors import page_on_run_failure, retry_undelivered_alerts
from loyalty_ops.defs.resources import PostgresTarget
from loyalty_ops.defs.settings import load_settings
from loyalty_ops_tests.lib.alerting.http_recorder import HangingServer

ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"
POSTGRES = PostgresTarget(host="db.internal", port=5432, user="loyalty", password="pw-hang-test", database="loyalty")
BUDGET_S = 1.5
MARGIN_S = 1.5  # Dagster's own work for three runs in one tick (SQLite instance, 2 busy cores)


def _failing_job(name: str) -> dg.JobDefinition:
    @dg.op(name=f"{name}_step")
    def step() -> None:
        raise dg.Failure(description=f"{name} could not reach the database")

    @dg.job(name=name)
    def job():
        step()

    return job


FAILING_JOBS = [_failing_job(name) for name in ("nightly_backup_job", "restore_drill_job", "weekly_maintenance_job")]


def _alerting(pagerduty_url: str, webhook_url: str, slack_url: str, tls_cert) -> AlertingResource:
    return AlertingResource(
        webserver_base_url="https://dagster.loyalty.example",
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_events_url=f"{pagerduty_url}/v2/enqueue",
        pagerduty_ca_bundle=str(tls_cert[0]),
        slack=AlertSlack(token="xoxb-hang-test", base_url=f"{slack_url}/api/", channel="#loyalty-ops"),
        webhook_url=f"{webhook_url}/hooks/loyalty",
        connect_timeout_seconds=1,
        read_timeout_seconds=1,
        tick_delivery_budget_seconds=BUDGET_S,
        retry_backoff_seconds=0.01,
    )


def _tick(sensor, instance, resources, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor.evaluate_tick(context)


def test_a_hanging_pager_costs_one_budget_per_tick_and_its_pages_are_delivered_later(
    dagster_instance, pagerduty_server, slack_server, webhook_server, tls_cert
):
    with HangingServer() as hanging:
        resources = {
            "alerting": _alerting(hanging.url("https"), hanging.url(), slack_server.url, tls_cert),
            "postgres": POSTGRES,
        }
        cursor = _tick(page_on_run_failure, dagster_instance, resources).cursor
        runs = [job.execute_in_process(instance=dagster_instance, raise_on_error=False) for job in FAILING_JOBS]
        assert not any(run.success for run in runs)

        started = time.monotonic()
        data = _tick(page_on_run_failure, dagster_instance, resources, cursor)
        elapsed = time.monotonic() - started
        assert hanging.connections  # both the PagerDuty (TLS) and the webhook client did connect

    # the tick came back in time (today: 36 s per failed run) and handled all three runs
    print(f"three failed runs against a hanging pager: the tick took {elapsed:.2f} s (budget {BUDGET_S} s)")
    assert elapsed < BUDGET_S + MARGIN_S, f"the tick took {elapsed:.1f} s"
    failures = dagster_instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=10).records
    last_failure = max(r.storage_id for r in failures)
    assert json.loads(data.cursor)["record_id"] == last_failure
    # every page that was not delivered is queued, none lost: 3 incidents x (PagerDuty, webhook), and the
    # Slack pages the spent budget left no time for
    ledger = load_ledger(dagster_instance)
    assert len(ledger.incidents) == 3
    queued = [(p.destination, p.alert["component"]) for p in ledger.outbox]
    assert sorted(d for d, _ in queued if d != "slack") == ["pagerduty"] * 3 + ["webhook"] * 3
    assert len(slack_server.requests) + sum(d == "slack" for d, _ in queued) == 3
    assert not pagerduty_server.requests and not webhook_server.requests

    # the endpoint works again (a working server in its place): the retry sensor delivers all of it, in order
    live = {"alerting": _alerting(pagerduty_server.url, webhook_server.url, slack_server.url, tls_cert), "postgres": POSTGRES}
    _tick(retry_undelivered_alerts, dagster_instance, live)
    jobs = [job.name for job in FAILING_JOBS]
    assert [e["payload"]["component"] for e in pagerduty_server.bodies("/v2/enqueue")] == jobs
    assert [b["component"] for b in webhook_server.bodies()] == jobs
    assert len(slack_server.requests) == 3
    assert load_ledger(dagster_instance).outbox == []
    assert _tick(retry_undelivered_alerts, dagster_instance, live).skip_message == "nothing queued"


def test_delivery_timeouts_and_the_tick_budget_are_plain_settings():
    default = AlertingResource()
    assert (default.connect_timeout_seconds, default.read_timeout_seconds, default.tick_delivery_budget_seconds) == (3, 5, 20)
    configured = alerting_resource(load_settings({
        "LOYALTY_ALERT_CONNECT_TIMEOUT_SECONDS": "2",
        "LOYALTY_ALERT_READ_TIMEOUT_SECONDS": "4.5",
        "LOYALTY_ALERT_TICK_BUDGET_SECONDS": "15",
    }))
    assert configured.delivery_timeouts().connect_s == 2 and configured.delivery_timeouts().read_s == 4.5
    assert configured.delivery_budget().seconds == 15

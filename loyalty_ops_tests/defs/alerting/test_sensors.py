"""The paging sensors, evaluated against runs in a real Dagster instance, paging real HTTP(S) servers on
127.0.0.1 that stand in for PagerDuty, Slack and a webhook receiver."""

import json
import time
from datetime import datetime, timezone
from typing import Optional

import dagster as dg
import pytest

from loyalty_ops.defs.alerting.dispatch import load_ledger
from loyalty_ops.defs.alerting.resources import AlertingResource, AlertSlack
from loyalty_ops.defs.alerting.sensors import (
    page_on_failed_checks,
    page_on_run_failure,
    page_on_stale_backup,
    resolve_on_run_success,
    retry_undelivered_alerts,
)
from loyalty_ops.defs.backups.history import INTEGRITY_CHECK_NAMES
from loyalty_ops.defs.resources import PostgresTarget
from loyalty_ops_tests.lib.alerting.http_recorder import RecordingServer, unused_port

ROUTING_KEY = "R0UTINGKEY0123456789abcdef012345"
SLACK_TOKEN = "xoxb-loyalty-test-slack-token"
WEBHOOK_SECRET = "wh-secret-7c1d2e"
DB_PASSWORD = "Db-Passw0rd-for-tests"
WEBSERVER = "https://dagster.loyalty.example"
JOB = "backup_job_under_test"
DEDUP_KEY = f"loyalty_ops/run/{JOB}/loyalty"


# ---- a job that fails (or not) the way a backup fails ---------------------------------------------------


class DumpConfig(dg.Config):
    fail: bool = True


@dg.op
def database_backup_step(config: DumpConfig) -> None:
    if config.fail:
        raise dg.Failure(
            description=f"pg_dump exited with 1: connection to postgresql://loyalty:{DB_PASSWORD}@db.internal:5432/loyalty "
            f"failed (PGPASSWORD={DB_PASSWORD})"
        )


@dg.job(name=JOB, tags={"loyalty_ops/severity": "critical", "loyalty_ops/database_lock": "loyalty"})
def backup_job_under_test():
    database_backup_step()


def run_backup(instance: dg.DagsterInstance, *, fail: bool) -> dg.ExecuteInProcessResult:
    return backup_job_under_test.execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"database_backup_step": {"config": {"fail": fail}}}},
    )


# ---- fixtures ------------------------------------------------------------------------------------------


def alerting_for(pagerduty_url: str, tls_cert, slack: Optional[RecordingServer], webhook: Optional[RecordingServer], **kw):
    return AlertingResource(
        webserver_base_url=WEBSERVER,
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_events_url=f"{pagerduty_url}/v2/enqueue",
        pagerduty_ca_bundle=str(tls_cert[0]),
        slack=AlertSlack(token=SLACK_TOKEN, base_url=f"{slack.url}/api/", channel="#loyalty-ops") if slack else None,
        webhook_url=f"{webhook.url}/hooks/{WEBHOOK_SECRET}" if webhook else None,
        retry_backoff_seconds=0.01,
        read_timeout_seconds=3,
        **kw,
    )


POSTGRES = PostgresTarget(host="db.internal", port=5432, user="loyalty", password=DB_PASSWORD, database="loyalty")


@pytest.fixture
def resources(pagerduty_server, slack_server, webhook_server, tls_cert) -> dict:
    return {"alerting": alerting_for(pagerduty_server.url, tls_cert, slack_server, webhook_server), "postgres": POSTGRES}


@pytest.fixture(autouse=True)
def no_secret_left_the_platform(request):
    """After every test: no recorded request body contains a secret. The routing key is PagerDuty's
    credential and may appear only as the ``routing_key`` field of a PagerDuty event."""
    servers = [request.getfixturevalue(n) for n in ("pagerduty_server", "slack_server", "webhook_server") if n in request.fixturenames]
    yield
    for server in servers:
        for recorded in server.requests:
            body = recorded.json
            if recorded.path.endswith("/v2/enqueue"):
                assert body.pop("routing_key") == ROUTING_KEY
                text = json.dumps(body)
            else:
                text = json.dumps(body) + recorded.raw.decode(errors="replace")
            for secret in (DB_PASSWORD, SLACK_TOKEN, WEBHOOK_SECRET, ROUTING_KEY):
                assert secret not in text, f"{secret!r} was sent to {recorded.path}"


def tick(sensor: dg.SensorDefinition, instance, resources, cursor=None, definitions=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=definitions) as context:
        return sensor.evaluate_tick(context)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


# ---- run failure and success ---------------------------------------------------------------------------


def test_a_failed_run_pages_pagerduty_slack_and_the_webhook_with_the_exact_payload(
    dagster_instance, resources, pagerduty_server, slack_server, webhook_server
):
    result = run_backup(dagster_instance, fail=True)
    assert not result.success
    run = dagster_instance.get_run_by_id(result.run_id)
    with dg.build_run_status_sensor_context(
        sensor_name="page_on_run_failure",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=dagster_instance,
        dagster_run=run,
        resources=resources,
    ) as context:
        page_on_run_failure(context)  # the decorator hands the function a RunFailureSensorContext

    failed_at = iso(dagster_instance.get_run_record_by_id(result.run_id).end_time)
    run_link = f"{WEBSERVER}/runs/{result.run_id}"
    summary = (
        f"{JOB} failed on loyalty at step database_backup_step: pg_dump exited with 1: connection to "
        "postgresql://loyalty:***@db.internal:5432/loyalty failed (PGPASSWORD=***)"
    )
    (event,) = pagerduty_server.bodies("/v2/enqueue")
    assert event == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": DEDUP_KEY,
        "payload": {
            "summary": summary,
            "source": "loyalty_ops:loyalty",
            "severity": "critical",
            "timestamp": failed_at,
            "component": JOB,
            "group": "loyalty",
            "class": "run_failure",
            "custom_details": {
                "job": JOB,
                "database": "loyalty",
                "run_id": result.run_id,
                "run_url": run_link,
                "failing_step": "database_backup_step",
                "error": "pg_dump exited with 1: connection to postgresql://loyalty:***@db.internal:5432/loyalty "
                "failed (PGPASSWORD=***)",
                "severity": "critical",
                "failed_at": failed_at,
            },
        },
        "client": "loyalty_ops (Dagster)",
        "links": [{"href": run_link, "text": "Open the run in Dagster"}],
        "client_url": run_link,
    }
    (slack,) = slack_server.requests
    assert slack.path == "/api/chat.postMessage" and slack.headers["authorization"] == f"Bearer {SLACK_TOKEN}"
    assert slack.json["channel"] == "#loyalty-ops"
    assert slack.json["text"] == f":rotating_light: [CRITICAL] {summary}\n<{run_link}|Open the run in Dagster>"
    (hook,) = webhook_server.requests
    assert hook.path == f"/hooks/{WEBHOOK_SECRET}"
    assert {k: hook.json[k] for k in ("event_action", "dedup_key", "severity", "summary", "link")} == {
        "event_action": "trigger", "dedup_key": DEDUP_KEY, "severity": "critical", "summary": summary, "link": run_link,
    }
    assert load_ledger(dagster_instance).is_open(DEDUP_KEY)


def test_cursor_across_ticks_one_incident_for_two_failures_and_a_success_resolves_it(
    dagster_instance, resources, pagerduty_server, slack_server, webhook_server
):
    failure_cursor = tick(page_on_run_failure, dagster_instance, resources).cursor  # first tick: start from now
    success_cursor = tick(resolve_on_run_success, dagster_instance, resources).cursor
    assert json.loads(failure_cursor)["record_id"] == -1

    first = run_backup(dagster_instance, fail=True)
    data = tick(page_on_run_failure, dagster_instance, resources, failure_cursor)
    assert json.loads(data.cursor)["record_id"] > json.loads(failure_cursor)["record_id"]
    failure_cursor = data.cursor
    assert [e["event_action"] for e in pagerduty_server.bodies()] == ["trigger"]
    assert pagerduty_server.bodies()[0]["payload"]["custom_details"]["run_id"] == first.run_id

    # a tick with nothing new sends nothing and keeps the cursor
    data = tick(page_on_run_failure, dagster_instance, resources, failure_cursor)
    assert data.cursor in (None, failure_cursor) and len(pagerduty_server.requests) == 1

    # the same job fails again: the cursor moves on, the incident stays one page
    run_backup(dagster_instance, fail=True)
    data = tick(page_on_run_failure, dagster_instance, resources, failure_cursor)
    assert json.loads(data.cursor)["record_id"] > json.loads(failure_cursor)["record_id"]
    failure_cursor = data.cursor
    assert len(pagerduty_server.requests) == 1 and len(slack_server.requests) == 1 and len(webhook_server.requests) == 1
    assert load_ledger(dagster_instance).incidents[DEDUP_KEY].occurrences == 2

    # the next success resolves it, once
    fixed = run_backup(dagster_instance, fail=False)
    assert fixed.success
    success_cursor = tick(resolve_on_run_success, dagster_instance, resources, success_cursor).cursor
    assert [e["event_action"] for e in pagerduty_server.bodies()] == ["trigger", "resolve"]
    assert pagerduty_server.bodies()[1] == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": DEDUP_KEY}
    assert slack_server.requests[-1].json["text"].startswith(f":white_check_mark: Resolved: {JOB} succeeded on loyalty")
    assert webhook_server.requests[-1].json["event_action"] == "resolve"
    tick(resolve_on_run_success, dagster_instance, resources, success_cursor)
    assert len(pagerduty_server.requests) == 2

    # another success with nothing open sends nothing; a new failure is a new incident
    run_backup(dagster_instance, fail=False)
    success_cursor = tick(resolve_on_run_success, dagster_instance, resources, success_cursor).cursor
    assert len(pagerduty_server.requests) == 2
    run_backup(dagster_instance, fail=True)
    tick(page_on_run_failure, dagster_instance, resources, failure_cursor)
    assert [e["event_action"] for e in pagerduty_server.bodies()] == ["trigger", "resolve", "trigger"]


def test_an_unreachable_pager_does_not_crash_the_sensor_and_the_page_is_delivered_later(
    dagster_instance, pagerduty_server, slack_server, tls_cert, capfd
):
    dead = {"alerting": alerting_for(f"https://127.0.0.1:{unused_port()}", tls_cert, slack_server, None), "postgres": POSTGRES}
    cursor = tick(page_on_run_failure, dagster_instance, dead).cursor
    run_backup(dagster_instance, fail=True)
    capfd.readouterr()
    data = tick(page_on_run_failure, dagster_instance, dead, cursor)
    # the sensor's log (Dagster shows it on the tick, and its console handler writes it to stderr)
    log_lines = capfd.readouterr().err.splitlines()
    assert json.loads(data.cursor)["record_id"] > json.loads(cursor)["record_id"]  # the tick completed
    assert len(slack_server.requests) == 1  # Slack got the page while PagerDuty was down
    errors = [line for line in log_lines if " - ERROR - " in line and "pagerduty: could not send trigger" in line]
    assert len(errors) == 1, log_lines
    assert f"pagerduty: could not send trigger for {DEDUP_KEY} after 3 attempt(s)" in errors[0]
    assert "It stays queued and is retried on the next tick." in errors[0]
    retries = [line for line in log_lines if " - WARNING - " in line and "retrying in" in line]
    assert len(retries) == 2, log_lines
    (pending,) = load_ledger(dagster_instance).outbox
    assert (pending.destination, pending.action, pending.attempts) == ("pagerduty", "trigger", 3)

    # still down: the retry sensor tries again and keeps it
    tick(retry_undelivered_alerts, dagster_instance, dead)
    assert load_ledger(dagster_instance).outbox[0].attempts == 6
    # PagerDuty is back: the queued page goes out, nothing is sent twice to Slack
    live = {"alerting": alerting_for(pagerduty_server.url, tls_cert, slack_server, None), "postgres": POSTGRES}
    tick(retry_undelivered_alerts, dagster_instance, live)
    assert [(e["event_action"], e["dedup_key"]) for e in pagerduty_server.bodies()] == [("trigger", DEDUP_KEY)]
    assert load_ledger(dagster_instance).outbox == [] and len(slack_server.requests) == 1
    assert tick(retry_undelivered_alerts, dagster_instance, live).skip_message == "nothing queued"


# ---- backup freshness ----------------------------------------------------------------------------------


@dg.asset(
    key="database_backup",
    check_specs=[dg.AssetCheckSpec(name, asset="database_backup") for name in INTEGRITY_CHECK_NAMES],
)
def verified_backup_stand_in():
    """Records a backup and its four passing integrity checks, as the real pipeline does."""
    return dg.MaterializeResult(
        metadata={"database": "loyalty", "filename": "loyalty_20261127_020000.dump.gz"},
        check_results=[dg.AssetCheckResult(check_name=name, passed=True) for name in INTEGRITY_CHECK_NAMES],
    )


def test_stale_backup_pages_once_keeps_its_cursor_and_resolves_on_a_verified_backup(
    dagster_instance, resources, pagerduty_server
):
    first = tick(page_on_stale_backup, dagster_instance, resources)
    assert first.skip_message.startswith("fresh: no successful backup recorded yet")
    watched_since = json.loads(first.cursor)["watched_since"]
    assert abs(watched_since - time.time()) < 60 and pagerduty_server.requests == []

    # the schedule never ran: 27 h after the sensor started watching there is still no backup
    cursor = json.dumps({"watched_since": watched_since - 27 * 3600})
    data = tick(page_on_stale_backup, dagster_instance, resources, cursor)
    assert data.skip_message.startswith("STALE: no successful backup has ever been recorded")
    assert json.loads(data.cursor)["watched_since"] == watched_since - 27 * 3600
    (event,) = pagerduty_server.bodies()
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "loyalty_ops/backup_freshness/loyalty"
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["summary"] == (
        "No successful backup of loyalty: no successful backup has ever been recorded (watched for more than 26 h)"
    )
    assert event["links"] == [{"href": f"{WEBSERVER}/assets/database_backup", "text": "The database_backup asset"}]
    data = tick(page_on_stale_backup, dagster_instance, resources, data.cursor)  # still stale: no second page
    assert len(pagerduty_server.requests) == 1

    backup = dg.materialize([verified_backup_stand_in], instance=dagster_instance)
    data = tick(page_on_stale_backup, dagster_instance, resources, data.cursor)
    assert data.skip_message.startswith("fresh: the newest successful backup is 0.0 h old (limit 26 h)")
    assert json.loads(data.cursor)["last_backup_run_id"] == backup.run_id
    assert pagerduty_server.bodies()[-1] == {
        "routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "loyalty_ops/backup_freshness/loyalty"
    }


def test_backup_max_age_is_configurable(dagster_instance, pagerduty_server, tls_cert):
    dg.materialize([verified_backup_stand_in], instance=dagster_instance)
    strict = {"alerting": alerting_for(pagerduty_server.url, tls_cert, None, None, backup_max_age_hours=0.0001), "postgres": POSTGRES}
    time.sleep(0.5)
    data = tick(page_on_stale_backup, dagster_instance, strict)
    assert data.skip_message.startswith("STALE: the newest successful backup is 0.0 h old (limit 0.0001 h)")
    assert pagerduty_server.bodies()[0]["payload"]["custom_details"]["max_age_hours"] == 0.0001


# ---- failed checks -------------------------------------------------------------------------------------


class HealthConfig(dg.Config):
    healthy: bool = False


HEALTH_CHECKS = [
    dg.AssetCheckSpec("connections_below_limit", asset="database_health"),
    dg.AssetCheckSpec("disk_below_limit", asset="database_health"),
    dg.AssetCheckSpec("archive_readable", asset="database_health", blocking=True),
    dg.AssetCheckSpec("replication_lag_ok", asset="database_health"),
]


@dg.asset(key="database_health", check_specs=HEALTH_CHECKS)
def health_stand_in(config: HealthConfig):
    """Health checks as the reports domain emits them: a WARN breach, an ERROR breach, a blocking ERROR
    check and a breach with an explicit configured severity."""
    ok = config.healthy
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(check_name="connections_below_limit", passed=ok, severity=dg.AssetCheckSeverity.WARN,
                                description="connections at 85% of max_connections (warn at 80%)",
                                metadata={"level": "warn", "measured": 85.0}),
            dg.AssetCheckResult(check_name="disk_below_limit", passed=ok, severity=dg.AssetCheckSeverity.ERROR,
                                description=f"disk 93% full on postgresql://loyalty:{DB_PASSWORD}@db.internal/loyalty",
                                metadata={"level": "error", "measured": 93.0}),
            dg.AssetCheckResult(check_name="archive_readable", passed=ok, severity=dg.AssetCheckSeverity.ERROR,
                                description="archive is truncated"),
            dg.AssetCheckResult(check_name="replication_lag_ok", passed=ok, severity=dg.AssetCheckSeverity.WARN,
                                description="replica 400 s behind", metadata={"loyalty_ops/severity": "critical"}),
        ]
    )


def materialize_health(instance, healthy: bool):
    return dg.materialize(
        [health_stand_in], instance=instance, raise_on_error=False, tags={"loyalty_ops/severity": "warning"},
        run_config={"ops": {"database_health": {"config": {"healthy": healthy}}}},
    )


def test_failed_checks_page_at_their_severity_once_and_resolve_when_they_pass(dagster_instance, resources, pagerduty_server):
    definitions = dg.Definitions(assets=[health_stand_in])
    data = tick(page_on_failed_checks, dagster_instance, resources, definitions=definitions)
    assert json.loads(data.cursor) == {"checks": {}}

    broken = materialize_health(dagster_instance, healthy=False)
    data = tick(page_on_failed_checks, dagster_instance, resources, data.cursor, definitions)
    events = {e["dedup_key"]: e for e in pagerduty_server.bodies()}
    prefix = "loyalty_ops/check/database_health"
    assert {k: e["payload"]["severity"] for k, e in events.items()} == {
        f"{prefix}/connections_below_limit/loyalty": "warning",
        f"{prefix}/disk_below_limit/loyalty": "error",
        f"{prefix}/archive_readable/loyalty": "error",
        f"{prefix}/replication_lag_ok/loyalty": "critical",
    }
    disk = events[f"{prefix}/disk_below_limit/loyalty"]
    assert disk["payload"]["summary"] == (
        "check disk_below_limit on database_health failed for loyalty: disk 93% full on postgresql://loyalty:***@db.internal/loyalty"
    )
    assert disk["links"][0]["href"] == f"{WEBSERVER}/runs/{broken.run_id}"
    assert events[f"{prefix}/archive_readable/loyalty"]["payload"]["custom_details"]["blocking"] is True
    assert set(json.loads(data.cursor)["checks"]) == {f"database_health:{s.name}" for s in HEALTH_CHECKS}

    # nothing new: nothing sent, cursor kept; failing again: still one incident each
    again = tick(page_on_failed_checks, dagster_instance, resources, data.cursor, definitions)
    assert json.loads(again.cursor) == json.loads(data.cursor) and len(pagerduty_server.requests) == 4
    materialize_health(dagster_instance, healthy=False)
    data = tick(page_on_failed_checks, dagster_instance, resources, data.cursor, definitions)
    assert len(pagerduty_server.requests) == 4

    materialize_health(dagster_instance, healthy=True)
    tick(page_on_failed_checks, dagster_instance, resources, data.cursor, definitions)
    resolves = [e["dedup_key"] for e in pagerduty_server.bodies() if e["event_action"] == "resolve"]
    assert sorted(resolves) == sorted(events)


def test_warn_checks_can_be_kept_off_the_pager(dagster_instance, pagerduty_server, tls_cert):
    quiet = {"alerting": alerting_for(pagerduty_server.url, tls_cert, None, None, page_warn_checks=False), "postgres": POSTGRES}
    definitions = dg.Definitions(assets=[health_stand_in])
    materialize_health(dagster_instance, healthy=False)
    tick(page_on_failed_checks, dagster_instance, quiet, None, definitions)
    paged = sorted(e["dedup_key"].split("/")[3] for e in pagerduty_server.bodies())
    assert paged == ["archive_readable", "disk_below_limit", "replication_lag_ok"]


@dg.asset
def adhoc_restore_probe():
    raise RuntimeError("restore probe could not reach the scratch database")


def test_an_ad_hoc_materialization_gets_its_own_incident_named_after_its_assets(dagster_instance, resources, pagerduty_server):
    result = dg.materialize([adhoc_restore_probe], instance=dagster_instance, raise_on_error=False)
    run = dagster_instance.get_run_by_id(result.run_id)
    with dg.build_run_status_sensor_context(
        sensor_name="page_on_run_failure", dagster_event=result.get_run_failure_event(),
        dagster_instance=dagster_instance, dagster_run=run, resources=resources,
    ) as context:
        page_on_run_failure(context)
    (event,) = pagerduty_server.bodies()
    assert event["dedup_key"] == "loyalty_ops/run/assets:adhoc_restore_probe/loyalty"
    assert event["payload"]["severity"] == "critical"  # untagged, but it restores
    assert event["payload"]["summary"] == (
        "assets:adhoc_restore_probe failed on loyalty at step adhoc_restore_probe: "
        "RuntimeError: restore probe could not reach the scratch database"
    )


def test_a_misconfigured_destination_is_logged_and_does_not_block_the_others(dagster_instance, slack_server, tls_cert, capfd):
    misconfigured = {"alerting": alerting_for("http://127.0.0.1:1", tls_cert, slack_server, None), "postgres": POSTGRES}
    result = run_backup(dagster_instance, fail=True)
    capfd.readouterr()
    with dg.build_run_status_sensor_context(
        sensor_name="page_on_run_failure", dagster_event=result.get_run_failure_event(),
        dagster_instance=dagster_instance, dagster_run=dagster_instance.get_run_by_id(result.run_id),
        resources=misconfigured,
    ) as context:
        page_on_run_failure(context)
    err = capfd.readouterr().err
    assert "pagerduty: cannot set up this destination: ValueError: LOYALTY_PAGERDUTY_EVENTS_URL must be an https:// URL" in err
    assert len(slack_server.requests) == 1
    assert [(p.destination, p.action) for p in load_ledger(dagster_instance).outbox] == [("pagerduty", "trigger")]


def test_a_run_stopped_by_a_blocking_check_names_the_checks_and_their_findings(dagster_instance, resources, pagerduty_server):
    result = materialize_health(dagster_instance, healthy=False)
    assert not result.success
    with dg.build_run_status_sensor_context(
        sensor_name="page_on_run_failure", dagster_event=result.get_run_failure_event(),
        dagster_instance=dagster_instance, dagster_run=dagster_instance.get_run_by_id(result.run_id), resources=resources,
    ) as context:
        page_on_run_failure(context)
    (event,) = pagerduty_server.bodies()
    assert event["payload"]["summary"] == (
        "assets:database_health failed on loyalty at step database_health: "
        "1 blocking asset check failed with ERROR severity: database_health: archive_readable"
    )
    assert event["payload"]["severity"] == "warning"  # the run's tag
    assert sorted(event["payload"]["custom_details"]["failed_checks"]) == [
        "database_health:archive_readable: archive is truncated",
        "database_health:connections_below_limit: connections at 85% of max_connections (warn at 80%)",
        "database_health:disk_below_limit: disk 93% full on postgresql://loyalty:***@db.internal/loyalty",
        "database_health:replication_lag_ok: replica 400 s behind",
    ]


def test_an_unreadable_ledger_is_set_aside_and_paging_goes_on(dagster_instance, resources, pagerduty_server):
    from loyalty_ops.defs.alerting.dispatch import UNREADABLE_LEDGER_ASSET_KEY, read_ledger_text, write_ledger_text

    write_ledger_text(dagster_instance, "{not json")
    result = run_backup(dagster_instance, fail=True)
    with dg.build_run_status_sensor_context(
        sensor_name="page_on_run_failure", dagster_event=result.get_run_failure_event(),
        dagster_instance=dagster_instance, dagster_run=dagster_instance.get_run_by_id(result.run_id), resources=resources,
    ) as context:
        page_on_run_failure(context)
    assert [e["event_action"] for e in pagerduty_server.bodies()] == ["trigger"]
    assert read_ledger_text(dagster_instance, UNREADABLE_LEDGER_ASSET_KEY) == "{not json"
    assert load_ledger(dagster_instance).is_open(DEDUP_KEY)


def test_a_run_that_never_started_pages_with_the_monitoring_message(dagster_instance, resources, pagerduty_server):
    """What run monitoring does to a run stuck in STARTING: it reports the run failed, with no step."""
    cursor = tick(page_on_run_failure, dagster_instance, resources).cursor
    run = dagster_instance.create_run_for_job(
        backup_job_under_test, tags={"loyalty_ops/severity": "critical", "loyalty_ops/database_lock": "loyalty"}
    )
    dagster_instance.report_run_failed(run, "Run timed out due to taking longer than 180 seconds to start.")
    tick(page_on_run_failure, dagster_instance, resources, cursor)
    (event,) = pagerduty_server.bodies()
    assert event["payload"]["summary"] == (
        f"{JOB} failed on loyalty at run (no step failed): Run timed out due to taking longer than 180 seconds to start."
    )
    assert event["payload"]["custom_details"]["failing_step"] is None


def test_the_ledger_is_kept_and_read_through_public_instance_apis_and_a_quiet_tick_writes_nothing(
    dagster_instance, resources, pagerduty_server
):
    from loyalty_ops.defs.alerting.dispatch import LEDGER_ASSET_KEY, LEDGER_METADATA_KEY

    def ledger_observations() -> list:
        return dagster_instance.fetch_observations(LEDGER_ASSET_KEY, limit=100).records

    failure_cursor = tick(page_on_run_failure, dagster_instance, resources).cursor
    assert ledger_observations() == []  # nothing happened: nothing written
    run_backup(dagster_instance, fail=True)
    failure_cursor = tick(page_on_run_failure, dagster_instance, resources, failure_cursor).cursor
    (saved,) = ledger_observations()  # one tick, one save (trigger and delivery together)
    metadata = saved.asset_observation.metadata
    assert metadata["open_incidents"].value == 1 and metadata["queued_messages"].value == 0
    assert list(json.loads(metadata[LEDGER_METADATA_KEY].value)["incidents"]) == [DEDUP_KEY]
    assert [e["event_action"] for e in pagerduty_server.bodies()] == ["trigger"]

    # quiet ticks of every sensor that reads the ledger: nothing new, nothing sent, nothing written
    tick(page_on_run_failure, dagster_instance, resources, failure_cursor)
    tick(retry_undelivered_alerts, dagster_instance, resources)
    assert len(ledger_observations()) == 1 and len(pagerduty_server.requests) == 1
    assert load_ledger(dagster_instance).is_open(DEDUP_KEY)

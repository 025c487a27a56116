"""Alert wording, severities, dedup keys and what each destination receives."""

import pytest

from loyalty_ops.lib.alerting.alerts import (
    CheckFacts,
    RunFailureFacts,
    backup_freshness,
    backup_stale_alert,
    check_failed_alert,
    check_pager_severity,
    clean_error,
    job_severity,
    run_dedup_key,
    run_failure_alert,
    run_recovery_alert,
)
from loyalty_ops.lib.alerting.notifiers import pagerduty_event, slack_message, webhook_body

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
BACKUP_TAGS = {"loyalty_ops/severity": "critical", "loyalty_ops/database_lock": "loyalty"}


def _failure(**overrides) -> RunFailureFacts:
    fields = dict(
        job_name="nightly_backup_job",
        run_id="r-1",
        tags=BACKUP_TAGS,
        failed_at=T0,
        failing_step="database_backup",
        error="dagster._core.definitions.events.Failure: pg_dump exited with 1: "
        "connection to postgresql://loyalty:Hunter2Pw@db:5432/loyalty failed\n\nStack trace ...",
    )
    fields.update(overrides)
    return RunFailureFacts(**fields)


@pytest.mark.parametrize(
    "tags, job, expected",
    [
        ({"loyalty_ops/severity": "critical"}, "weekly_maintenance_job", "critical"),
        ({"loyalty_ops/severity": "WARNING"}, "nightly_backup_job", "warning"),
        ({}, "restore_job", "critical"),
        ({}, "nightly_backup_job", "critical"),
        ({}, "morning_report_job", "warning"),
        ({"loyalty_ops/severity": "p0"}, "morning_report_job", "warning"),
    ],
)
def test_severity_comes_from_the_tag_then_the_job(tags, job, expected):
    assert job_severity(tags, job) == expected


def test_run_failure_alert_has_the_exact_summary_link_step_and_no_secret():
    alert = run_failure_alert(_failure(), "https://dagster.example.com/", secrets=["Hunter2Pw"])
    assert alert.summary == (
        "nightly_backup_job failed on loyalty at step database_backup: pg_dump exited with 1: "
        "connection to postgresql://loyalty:***@db:5432/loyalty failed"
    )
    assert alert.severity == "critical"
    assert alert.dedup_key == "loyalty_ops/run/nightly_backup_job/loyalty"
    assert alert.link == "https://dagster.example.com/runs/r-1"
    assert alert.details["failing_step"] == "database_backup"
    assert alert.details["error"].startswith("pg_dump exited with 1")
    assert "Hunter2Pw" not in repr(alert)


def test_database_falls_back_to_the_configured_target():
    alert = run_failure_alert(_failure(tags={}, job_name="morning_report_job", default_database="loyalty_prod"), "http://x")
    assert alert.dedup_key == run_dedup_key("morning_report_job", "loyalty_prod") == "loyalty_ops/run/morning_report_job/loyalty_prod"
    assert alert.severity == "warning"


def test_a_run_that_failed_outside_any_step_says_so():
    alert = run_failure_alert(_failure(failing_step=None, error="Run timed out after 180 seconds in STARTING"), "http://x")
    assert alert.summary == "nightly_backup_job failed on loyalty at run (no step failed): Run timed out after 180 seconds in STARTING"


def test_clean_error_drops_only_the_exception_class_prefix():
    assert clean_error("dagster._core.definitions.events.Failure: disk full") == "disk full"
    assert clean_error("disk full: no space left") == "disk full: no space left"


def test_pagerduty_trigger_and_resolve_bodies():
    alert = run_failure_alert(_failure(), "http://dagster:3000")
    event = pagerduty_event("trigger", alert)
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "loyalty_ops/run/nightly_backup_job/loyalty"
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["source"] == "loyalty_ops:loyalty"
    assert event["payload"]["component"] == "nightly_backup_job"
    assert event["payload"]["timestamp"] == "2026-09-21T14:13:20+00:00"
    assert event["links"] == [{"href": "http://dagster:3000/runs/r-1", "text": "Open the run in Dagster"}]
    assert "routing_key" not in event  # added by the client
    assert pagerduty_event("resolve", alert) == {"event_action": "resolve", "dedup_key": alert.dedup_key}


def test_slack_and_webhook_messages_carry_the_link_step_and_error():
    alert = run_failure_alert(_failure(), "http://dagster:3000")
    message = slack_message("trigger", alert)
    assert message["text"].startswith(":rotating_light: [CRITICAL] nightly_backup_job failed on loyalty")
    assert "<http://dagster:3000/runs/r-1|Open the run in Dagster>" in message["text"]
    fields = str(message["blocks"])
    assert "Failing step" in fields and "database_backup" in fields
    body = webhook_body("trigger", alert)
    assert body["event_action"] == "trigger" and body["link"] == "http://dagster:3000/runs/r-1"
    recovery = run_recovery_alert("nightly_backup_job", "r-2", BACKUP_TAGS, T0 + 60, "http://dagster:3000")
    assert recovery.dedup_key == alert.dedup_key
    assert slack_message("resolve", recovery)["text"].startswith(":white_check_mark: Resolved: nightly_backup_job succeeded on loyalty")


def test_backup_freshness_counts_from_the_last_backup_or_from_when_watching_began():
    hour = 3600.0
    assert not backup_freshness(T0 - 25 * hour, T0, 26, T0 - 100 * hour).stale
    stale = backup_freshness(T0 - 27 * hour, T0, 26, T0 - 100 * hour)
    assert stale.stale and stale.reason == "the newest successful backup is 27.0 h old (limit 26 h)"
    # never any backup: a fresh install does not page at once, a schedule that never runs does
    assert not backup_freshness(None, T0, 26, T0 - 1 * hour).stale
    never = backup_freshness(None, T0, 26, T0 - 27 * hour)
    assert never.stale and never.reason == "no successful backup has ever been recorded (watched for more than 26 h)"
    alert = backup_stale_alert(stale, "loyalty", T0, "http://d", last_backup_run_id="r-9", last_backup_file="f.dump.gz")
    assert alert.summary == "No successful backup of loyalty: the newest successful backup is 27.0 h old (limit 26 h)"
    assert alert.severity == "critical" and alert.dedup_key == "loyalty_ops/backup_freshness/loyalty"
    assert alert.link == "http://d/runs/r-9"


def _check(**overrides) -> CheckFacts:
    fields = dict(
        asset_key="database_health", check_name="connections_below_limit", passed=False, check_severity="WARN",
        blocking=False, run_id="r-5", evaluated_at=T0, description="connections at 85% of max_connections",
        run_tags={"loyalty_ops/severity": "warning"}, metadata={"level": "warn", "measured": 85.0},
    )
    fields.update(overrides)
    return CheckFacts(**fields)


def test_check_severity_rules():
    assert check_pager_severity(_check()) == "warning"
    assert check_pager_severity(_check(), page_warn=False) is None
    assert check_pager_severity(_check(blocking=True), page_warn=False) == "warning"
    assert check_pager_severity(_check(check_severity="ERROR")) == "error"
    assert check_pager_severity(_check(check_severity="ERROR", run_tags={"loyalty_ops/severity": "critical"})) == "critical"
    assert check_pager_severity(_check(metadata={"loyalty_ops/severity": "critical"})) == "critical"


def test_check_alert_wording():
    alert = check_failed_alert(_check(run_tags={"loyalty_ops/database_lock": "loyalty"}), "warning", "http://d")
    assert alert.summary == "check connections_below_limit on database_health failed for loyalty: connections at 85% of max_connections"
    assert alert.dedup_key == "loyalty_ops/check/database_health/connections_below_limit/loyalty"
    assert alert.details["metadata"] == {"level": "warn", "measured": 85.0}


def test_a_blocking_check_failure_summary_names_the_check():
    error = "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed with ERROR severity:\ndatabase_backup: backup_checksum_matches\n"
    alert = run_failure_alert(_failure(error=error, failed_checks=("database_backup:backup_checksum_matches: sha256 differs",)), "http://d")
    assert alert.summary == (
        "nightly_backup_job failed on loyalty at step database_backup: 1 blocking asset check failed with ERROR "
        "severity: database_backup: backup_checksum_matches"
    )
    assert alert.details["failed_checks"] == ["database_backup:backup_checksum_matches: sha256 differs"]

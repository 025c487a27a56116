"""The alerting domain as the code location loads it: sensors on by default, resource from the
environment with secrets as EnvVar, every schedule in the platform's timezone."""

import dagster as dg
import pytest

from loyalty_ops.defs.alerting.definitions import alerting_resource
from loyalty_ops.defs.alerting.sensors import ALERTING_SENSORS
from loyalty_ops.defs.settings import SettingsError, load_settings
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE


def test_environment_builds_the_resource_with_secrets_as_env_vars():
    environ = {
        "LOYALTY_WEBSERVER_BASE_URL": "https://dagster.loyalty.example",
        "LOYALTY_PAGERDUTY_ROUTING_KEY": "rk-secret-value",
        "LOYALTY_PAGERDUTY_EVENTS_URL": "https://events.eu.pagerduty.com/v2/enqueue",
        "LOYALTY_SLACK_TOKEN": "xoxb-secret",
        "LOYALTY_SLACK_CHANNEL": "#db-oncall",
        "LOYALTY_ALERT_WEBHOOK_URL": "https://hooks.example/abc",
        "LOYALTY_BACKUP_MAX_AGE_HOURS": "30",
        "LOYALTY_ALERT_PAGE_WARN_CHECKS": "false",
    }
    resource = alerting_resource(load_settings(environ))
    assert resource.webserver_base_url == "https://dagster.loyalty.example"
    assert resource.pagerduty_events_url == "https://events.eu.pagerduty.com/v2/enqueue"
    assert resource.backup_max_age_hours == 30.0 and resource.page_warn_checks is False
    assert resource.slack.channel == "#db-oncall"
    # secrets are references to the variables, resolved by Dagster at run time, never the values
    for value, name in (
        (resource.pagerduty_routing_key, "LOYALTY_PAGERDUTY_ROUTING_KEY"),
        (resource.webhook_url, "LOYALTY_ALERT_WEBHOOK_URL"),
        (resource.slack.token, "LOYALTY_SLACK_TOKEN"),
    ):
        assert isinstance(value, dg.EnvVar) and value == name


def test_defaults_without_any_destination():
    resource = alerting_resource(load_settings({}))
    assert resource.destination_names() == []
    assert resource.backup_max_age_hours == 26.0
    assert resource.pagerduty_events_url == "https://events.pagerduty.com/v2/enqueue"


def test_bad_numbers_name_the_variable():
    with pytest.raises(SettingsError, match="LOYALTY_BACKUP_MAX_AGE_HOURS must be a number"):
        load_settings({"LOYALTY_BACKUP_MAX_AGE_HOURS": "a day"})
    with pytest.raises(SettingsError, match="LOYALTY_ALERT_PAGE_WARN_CHECKS must be true or false"):
        load_settings({"LOYALTY_ALERT_PAGE_WARN_CHECKS": "maybe"})


def test_code_location_has_the_sensors_running_and_every_schedule_in_harare_time():
    from loyalty_ops.definitions import defs

    repository = defs.get_repository_def()
    sensors = {s.name: s for s in repository.sensor_defs}
    for sensor in ALERTING_SENSORS:
        assert sensors[sensor.name].default_status == dg.DefaultSensorStatus.RUNNING
    assert set(sensors) >= {
        "page_on_run_failure", "resolve_on_run_success", "page_on_stale_backup", "page_on_failed_checks",
        "retry_undelivered_alerts",
    }
    schedules = repository.schedule_defs
    assert "nightly_backup_schedule" in {s.name for s in schedules}
    for schedule in schedules:
        assert schedule.execution_timezone == PLATFORM_TIMEZONE, schedule.name

"""Alerting unit tests: stand-in servers for PagerDuty (HTTPS), Slack and a webhook on 127.0.0.1."""

from loyalty_ops_tests.lib.alerting.fixtures import pagerduty_server, slack_server, tls_cert, webhook_server  # noqa: F401

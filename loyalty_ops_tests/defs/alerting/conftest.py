from loyalty_ops_tests.lib.alerting.fixtures import pagerduty_server, slack_server, tls_cert, webhook_server  # noqa: F401

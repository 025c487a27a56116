"""Alerting: sensors that page on-call (PagerDuty, Slack, a JSON webhook) on failed runs, stale backups and failed checks."""

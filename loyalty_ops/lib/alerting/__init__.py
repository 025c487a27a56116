"""Paging logic without Dagster: alert payloads, dedup keys, secret scrubbing, incident state and
delivery to PagerDuty, Slack and a JSON webhook. The sensors in ``loyalty_ops.defs.alerting`` use it."""

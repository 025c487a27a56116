"""Dagster definitions, one folder per domain: backups, restore, maintenance, reports, retention, alerting."""

"""Dagster's own upkeep: bounded run history and compute logs, and a watchdog on the run queue."""

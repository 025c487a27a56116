"""Instance domain: Dagster's own upkeep (bounded run history and compute logs, run-queue watchdog)."""

import dagster as dg

from loyalty_ops.defs.instance.history import dagster_history_cleanup_job, dagster_history_cleanup_schedule
from loyalty_ops.defs.instance.queue import run_queue_watchdog

defs = dg.Definitions(
    jobs=[dagster_history_cleanup_job],
    schedules=[dagster_history_cleanup_schedule],
    sensors=[run_queue_watchdog],
)

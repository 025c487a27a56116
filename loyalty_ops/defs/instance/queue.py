"""`run_queue_watchdog`: says, every minute, why queued runs are waiting and warns when one waits too long.

The run queue (dagster.yaml) holds a backup, restore or maintenance run while another run holds the same
`loyalty_ops/database_lock`. That is intended, but a hung run would hold the lock until run monitoring's
max runtime (6 h). This sensor's tick history (Automation > run_queue_watchdog) shows the queue depth, the
oldest queued run and the run it waits for; past QUEUE_WAIT_WARNING it logs a warning naming both runs.
"""

from datetime import datetime, timedelta, timezone
from typing import Optional

import dagster as dg

from loyalty_ops.lib.concurrency import DATABASE_LOCK_TAG
QUEUE_WAIT_WARNING = timedelta(hours=2)
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _age(since: datetime, now: datetime) -> str:
    seconds = int((now - since).total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def describe_queue(instance: dg.DagsterInstance, now: Optional[datetime] = None) -> tuple[str, bool]:
    """A one-line account of the queue, and whether the oldest queued run has waited too long."""
    now = now or datetime.now(timezone.utc)
    queued = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]), limit=100, ascending=True)
    running = instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS), limit=100)
    if not queued:
        return f"run queue empty; {len(running)} run(s) in progress", False
    oldest = queued[0]
    run = oldest.dagster_run
    message = (
        f"{len(queued)} run(s) queued, {len(running)} in progress; oldest queued: {run.run_id[:8]} "
        f"({run.job_name}) waiting {_age(oldest.create_timestamp, now)}"
    )
    lock = run.tags.get(DATABASE_LOCK_TAG)
    if lock:
        holders = [r.dagster_run for r in running if r.dagster_run.tags.get(DATABASE_LOCK_TAG) == lock]
        if holders:
            holder = holders[0]
            message += f" for {DATABASE_LOCK_TAG}={lock}, held by run {holder.run_id[:8]} ({holder.job_name})"
    too_long = now - oldest.create_timestamp > QUEUE_WAIT_WARNING
    return message, too_long


@dg.sensor(
    name="run_queue_watchdog",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every minute: why queued runs wait (which run holds their database lock), with a warning when "
    "the oldest has waited over 2 hours. Launches nothing.",
)
def run_queue_watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    message, too_long = describe_queue(context.instance)
    if too_long:
        message = "WARNING: " + message + "; a run holding the lock may be hung (Runs > In progress)"
        context.log.warning(message)
    return dg.SkipReason(message)

"""Sensors that page on-call: failed runs of any job, the success that resolves them, a stale backup,
failed checks, and the retry of messages an endpoint did not accept.

All of them are on by default. None raises because a destination is down: the message stays queued in
the ledger (see ``dispatch``), ``retry_undelivered_alerts`` keeps trying it, and the run-status sensors'
cursors (kept by Dagster) move on without losing it. None spends more than the alerting resource's
delivery budget per tick on an endpoint that hangs (see ``loyalty_ops.lib.alerting.delivery``).
"""

import json
import inspect
import threading
import time
import weakref
from typing import Optional

import dagster as dg

from loyalty_ops.defs.alerting.dispatch import apply, load_ledger
from loyalty_ops.defs.alerting.resources import AlertingResource
from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, last_verified_backup
from loyalty_ops.defs.resources import PostgresTarget
from loyalty_ops.lib.alerting.delivery import DeliveryBudget
from loyalty_ops.lib.alerting.alerts import (
    CheckFacts,
    RunFailureFacts,
    backup_fresh_alert,
    backup_freshness,
    backup_freshness_dedup_key,
    backup_stale_alert,
    check_failed_alert,
    check_pager_severity,
    check_passed_alert,
    run_dedup_key,
    run_database,
    run_failure_alert,
    run_recovery_alert,
)

RUN_SENSOR_INTERVAL_S = 30
CHECK_SENSOR_INTERVAL_S = 60
FRESHNESS_SENSOR_INTERVAL_S = 300
RETRY_SENSOR_INTERVAL_S = 60
CHECK_HISTORY_DEPTH = 5


def described(make_sensor, **kwargs):
    """Like the sensor decorator ``make_sensor``, with the function's docstring as the UI description
    (Dagster's sensor decorators do not read docstrings)."""

    def wrap(fn):
        return make_sensor(description=inspect.cleandoc(fn.__doc__ or ""), **kwargs)(fn)

    return wrap


def _default_database(postgres: PostgresTarget) -> Optional[str]:
    try:
        return postgres.database_name
    except Exception:  # a malformed LOYALTY_DATABASE_URL must not stop paging
        return None


# One delivery budget per tick of a run-status sensor. Dagster calls such a sensor's function once per run
# (up to 5 per tick) and hands every call of one tick that tick's logger, so the logger identifies the tick;
# weak keys let a finished tick's budget go with its logger.
_TICK_BUDGETS: "weakref.WeakKeyDictionary[object, DeliveryBudget]" = weakref.WeakKeyDictionary()
_TICK_BUDGETS_LOCK = threading.Lock()


def _tick_budget(context: dg.RunStatusSensorContext, alerting: AlertingResource) -> DeliveryBudget:
    """The delivery budget of the tick this call belongs to (a new one for the tick's first run)."""
    with _TICK_BUDGETS_LOCK:
        try:
            budget = _TICK_BUDGETS.get(context.log)
            if budget is None:
                budget = _TICK_BUDGETS[context.log] = alerting.delivery_budget()
        except TypeError:  # a logger that cannot be weakly referenced: a budget per run, still bounded
            budget = alerting.delivery_budget()
    return budget


def _secrets(alerting: AlertingResource, postgres: PostgresTarget) -> list[str]:
    return alerting.secret_values([postgres.password, postgres.database_url])


def _error_text(error) -> str:
    """The useful message of a SerializableErrorInfo: Dagster wraps user exceptions in "Error occurred
    while executing op ..."; the cause is what on-call needs."""
    if error is None:
        return ""
    if error.cause is not None and error.message.startswith("dagster._core.errors.DagsterExecution"):
        return error.cause.message
    return error.message


def _job_label(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The job's name; for an ad-hoc materialization (Dagster's hidden ``__ASSET_JOB``) the assets it
    materializes, so unrelated ad-hoc runs do not share one incident."""
    if not run.job_name.startswith("__"):
        return run.job_name
    keys = set(run.asset_selection or ())
    if not keys:
        planned = instance.get_records_for_run(
            run_id=run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=50
        ).records
        keys = {r.event_log_entry.dagster_event.asset_key for r in planned if r.event_log_entry.dagster_event}
    if not keys:
        return run.job_name
    return ("assets:" + ",".join(sorted(key.to_user_string() for key in keys if key)))[:120]


def _failed_checks(instance: dg.DagsterInstance, run_id: str) -> tuple[str, ...]:
    """The checks that failed in the run, with their descriptions (a blocking check's failure only names
    the check in the step error)."""
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, limit=100
    ).records
    out = []
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if evaluation is None or getattr(evaluation, "passed", True):
            continue
        name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
        out.append(f"{name}: {evaluation.description}" if evaluation.description else name)
    return tuple(out)


def _run_end_time(instance: dg.DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    return (record.end_time if record and record.end_time else None) or time.time()


@described(dg.run_failure_sensor,
    name="page_on_run_failure",
    monitor_all_code_locations=True,
    minimum_interval_seconds=RUN_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def page_on_run_failure(
    context: dg.RunFailureSensorContext, alerting: AlertingResource, postgres: PostgresTarget
) -> None:
    """Pages on-call when any run of any job fails (including runs that run monitoring marks failed because
    they never started or their worker died). One incident per job and database: repeats while it is open
    do not page again. The page names the failing step and its error and links to the run."""
    run = context.dagster_run
    step_failures = context.get_step_failure_events()
    if step_failures:
        first = step_failures[0]
        step: Optional[str] = first.step_key
        error = _error_text(first.step_failure_data.error) or first.message or ""
    else:  # failed outside any step: never started, worker died, timed out, resource or launch error
        step = None
        data = context.failure_event.event_specific_data
        run_error = getattr(data, "error", None) if data is not None else None
        error = _error_text(run_error) or context.failure_event.message or ""
    facts = RunFailureFacts(
        job_name=_job_label(context.instance, run),
        run_id=run.run_id,
        tags=dict(run.tags),
        failed_at=_run_end_time(context.instance, run.run_id),
        failing_step=step,
        error=error,
        default_database=_default_database(postgres),
        failed_checks=_failed_checks(context.instance, run.run_id),
    )
    secrets = _secrets(alerting, postgres)
    alert = run_failure_alert(facts, alerting.webserver_base_url, secrets)
    report = apply(context.instance, context.log, alerting, secrets, problems=[alert],
                   budget=_tick_budget(context, alerting))
    context.log.info(report.describe())
    # Returning None lets Dagster go on to the next failed run in the same tick.


@described(dg.run_status_sensor,
    name="resolve_on_run_success",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitor_all_code_locations=True,
    minimum_interval_seconds=RUN_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def resolve_on_run_success(
    context: dg.RunStatusSensorContext, alerting: AlertingResource, postgres: PostgresTarget
) -> None:
    """Resolves a job's open incident when a later run of the same job (on the same database) succeeds."""
    run = context.dagster_run
    default_database = _default_database(postgres)
    job = _job_label(context.instance, run)
    key = run_dedup_key(job, run_database(run.tags, default_database))
    if not load_ledger(context.instance).is_open(key):
        return None  # the common case: nothing was open, send nothing
    recovery = run_recovery_alert(
        job, run.run_id, dict(run.tags), _run_end_time(context.instance, run.run_id),
        alerting.webserver_base_url, default_database,
    )
    report = apply(context.instance, context.log, alerting, _secrets(alerting, postgres), recoveries=[recovery],
                   budget=_tick_budget(context, alerting))
    context.log.info(report.describe())


def _dagster_freshness_state(instance: dg.DagsterInstance) -> Optional[str]:
    """Dagster's own verdict on `database_backup`'s freshness policy (PASS/WARN/FAIL), recorded when the
    instance runs the freshness daemon (`freshness: enabled: true`); None when it is not recorded."""
    try:
        record = instance.get_freshness_state_records([BACKUP_ASSET_KEY]).get(BACKUP_ASSET_KEY)
    except Exception:  # storage without freshness support
        return None
    return record.freshness_state.value if record else None


def _load_cursor(cursor: Optional[str]) -> dict:
    try:
        value = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        value = {}
    return value if isinstance(value, dict) else {}


@described(dg.sensor,
    name="page_on_stale_backup",
    minimum_interval_seconds=FRESHNESS_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def page_on_stale_backup(
    context: dg.SensorEvaluationContext, alerting: AlertingResource, postgres: PostgresTarget
) -> dg.SkipReason:
    """Pages (critical) when there has been no successful, verified backup for `backup_max_age_hours`
    (LOYALTY_BACKUP_MAX_AGE_HOURS, default 26, matching the freshness policy of `database_backup`). This
    catches the nightly schedule never running at all, which no run-failure sensor can see. Resolves when a
    verified backup appears. Cursor: when the sensor started watching, and the last verdict."""
    cursor = _load_cursor(context.cursor)
    now = time.time()
    watched_since = float(cursor.get("watched_since") or now)
    latest = last_verified_backup(context.instance)
    freshness = backup_freshness(latest.timestamp if latest else None, now, alerting.backup_max_age_hours, watched_since)
    database = _default_database(postgres) or (latest.metadata.get("database") if latest else None) or "unknown"
    secrets = _secrets(alerting, postgres)
    policy_state = _dagster_freshness_state(context.instance)
    if freshness.stale:
        alert = backup_stale_alert(
            freshness, database, now, alerting.webserver_base_url,
            last_backup_run_id=latest.run_id if latest else None,
            last_backup_file=latest.metadata.get("filename") if latest else None,
            freshness_policy_state=policy_state,
        )
        report = apply(context.instance, context.log, alerting, secrets, problems=[alert], now=now)
    else:
        recoveries = []
        if load_ledger(context.instance).is_open(backup_freshness_dedup_key(database)):
            recoveries.append(backup_fresh_alert(freshness, database, now, alerting.webserver_base_url,
                                                 latest.run_id if latest else None))
        report = apply(context.instance, context.log, alerting, secrets, recoveries=recoveries, now=now)
    context.update_cursor(
        json.dumps(
            {
                "watched_since": watched_since,
                "stale": freshness.stale,
                "last_backup_run_id": latest.run_id if latest else None,
                "checked_at": now,
            },
            sort_keys=True,
        )
    )
    policy = f"; freshness policy: {policy_state}" if policy_state else ""
    return dg.SkipReason(f"{'STALE' if freshness.stale else 'fresh'}: {freshness.reason}{policy}; {report.describe()}")


@described(dg.sensor,
    name="page_on_failed_checks",
    minimum_interval_seconds=CHECK_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def page_on_failed_checks(
    context: dg.SensorEvaluationContext, alerting: AlertingResource, postgres: PostgresTarget
) -> dg.SkipReason:
    """Pages when an asset check fails: the backup's blocking integrity checks, the restore drill's check,
    the health checks' threshold breaches. Severity: an explicit `loyalty_ops/severity` in the result, else
    ERROR -> error (critical for runs tagged critical), WARN -> warning (LOYALTY_ALERT_PAGE_WARN_CHECKS=false
    turns WARN pages off). One incident per check and database; the next passing evaluation resolves it.
    Cursor: the last evaluation seen per check."""
    cursor = _load_cursor(context.cursor)
    seen: dict = dict(cursor.get("checks") or {})
    repository = context.repository_def
    if repository is None:
        return dg.SkipReason("no repository is loaded; there are no checks to watch")
    default_database = _default_database(postgres)
    secrets = _secrets(alerting, postgres)
    open_keys = set(load_ledger(context.instance).incidents)
    problems, recoveries = [], []
    storage = context.instance.event_log_storage
    for check_key in sorted(repository.asset_graph.asset_check_keys, key=lambda k: k.to_user_string()):
        name = check_key.to_user_string()
        records = storage.get_asset_check_execution_history(check_key, limit=CHECK_HISTORY_DEPTH)
        # finished = holds an evaluation (succeeded or failed); planned and running checks hold none
        finished = [r for r in records if r.event is not None and r.event.asset_check_evaluation is not None]
        if not finished:
            continue
        latest = max(finished, key=lambda r: r.id)
        if latest.id <= int(seen.get(name, 0)):
            continue
        seen[name] = latest.id
        evaluation = latest.event.asset_check_evaluation
        run = context.instance.get_run_by_id(latest.run_id)
        facts = CheckFacts(
            asset_key=check_key.asset_key.to_user_string(),
            check_name=check_key.name,
            passed=bool(evaluation.passed),
            check_severity=evaluation.severity.value,
            blocking=bool(evaluation.blocking),
            run_id=latest.run_id,
            evaluated_at=latest.event.timestamp,
            description=evaluation.description,
            run_tags=dict(run.tags) if run else {},
            metadata={k: getattr(v, "value", v) for k, v in evaluation.metadata.items()},
            default_database=default_database,
        )
        if facts.passed:
            alert = check_passed_alert(facts, alerting.webserver_base_url)
            if alert.dedup_key in open_keys:
                recoveries.append(alert)
            continue
        severity = check_pager_severity(facts, page_warn=alerting.page_warn_checks)
        if severity is None:
            context.log.info(f"check {name} failed with WARN severity; not paging (page_warn_checks is off)")
            continue
        problems.append(check_failed_alert(facts, severity, alerting.webserver_base_url, secrets))
    report = apply(context.instance, context.log, alerting, secrets, problems=problems, recoveries=recoveries)
    context.update_cursor(json.dumps({"checks": seen}, sort_keys=True))
    return dg.SkipReason(f"checked {len(seen)} check(s); {report.describe()}")


@described(dg.sensor,
    name="retry_undelivered_alerts",
    minimum_interval_seconds=RETRY_SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def retry_undelivered_alerts(
    context: dg.SensorEvaluationContext, alerting: AlertingResource, postgres: PostgresTarget
) -> dg.SkipReason:
    """Delivers messages that a destination did not accept earlier (endpoint down, timeout, HTTP 5xx),
    in order, until they are delivered or `max_undelivered_age_hours` old."""
    if not load_ledger(context.instance).outbox:
        return dg.SkipReason("nothing queued")
    report = apply(context.instance, context.log, alerting, _secrets(alerting, postgres))
    return dg.SkipReason(report.describe())


ALERTING_SENSORS = [
    page_on_run_failure,
    resolve_on_run_success,
    page_on_stale_backup,
    page_on_failed_checks,
    retry_undelivered_alerts,
]

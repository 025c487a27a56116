"""Open and resolve incidents and deliver their messages, with the ledger kept in the Dagster instance.

The ledger (open incidents and the outbox of undelivered messages) is one JSON document kept in the
instance's event log as an asset observation of ``loyalty_ops/alerting/incident_ledger``: written with
``DagsterInstance.report_runless_asset_event`` and read back with ``DagsterInstance.fetch_observations``
(the newest one wins). Both are public instance APIs, so a Dagster upgrade cannot silently break paging;
the ledger lives in the instance's PostgreSQL database in production and survives restarts. Every sensor
of this domain calls :func:`apply` once per tick: load, decide, deliver (with retries), save.

Why not the alternatives: sensor cursors belong to one sensor and are written only at the end of its tick,
while this ledger is shared by five sensors and must be saved as soon as a message is delivered (a
run-status sensor's cursor is Dagster's own); the key-value store behind the daemons' cursors
(``run_storage.set_cursor_values``) and a table of our own in the Dagster database are reachable only through
private storage objects. The price of the event log: one small observation per tick that changed the ledger
(most ticks change nothing and write nothing), and the asset's page in the UI shows the ledger's history
(open incidents and queued messages as numbers). Wiping the instance or this asset forgets the ledger.
"""

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import dagster as dg

from loyalty_ops.defs.alerting.resources import AlertingResource
from loyalty_ops.lib.alerting.alerts import Alert
from loyalty_ops.lib.alerting.delivery import DeliveryBudget, FlushReport, flush_outbox
from loyalty_ops.lib.alerting.incidents import IncidentLedger
from loyalty_ops.lib.alerting.notifiers import Logger

LEDGER_ASSET_KEY = dg.AssetKey(["loyalty_ops", "alerting", "incident_ledger"])
# Where an unreadable ledger is set aside (for a person to read) before paging starts a new one.
UNREADABLE_LEDGER_ASSET_KEY = dg.AssetKey(["loyalty_ops", "alerting", "incident_ledger_unreadable"])
LEDGER_METADATA_KEY = "ledger"
# Sensors of one code location are evaluated in one process, in parallel threads when the daemon's
# `sensors.use_threads` is on: the load-decide-save of the ledger must not interleave.
_LEDGER_LOCK = threading.Lock()


def read_ledger_text(instance: dg.DagsterInstance, key: dg.AssetKey = LEDGER_ASSET_KEY) -> Optional[str]:
    """The newest ledger document kept under ``key`` (None when there is none yet)."""
    records = instance.fetch_observations(key, limit=1).records
    observation = records[0].asset_observation if records else None
    if observation is None:
        return None
    value = observation.metadata.get(LEDGER_METADATA_KEY)
    return None if value is None else str(getattr(value, "value", value))


def write_ledger_text(
    instance: dg.DagsterInstance, text: str, key: dg.AssetKey = LEDGER_ASSET_KEY, **numbers: int
) -> None:
    """Keep ``text`` as the newest ledger document under ``key`` (``numbers`` are shown in the UI too)."""
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=key,
            description="The paging ledger: open incidents and messages not yet delivered (kept by the alerting sensors).",
            metadata={LEDGER_METADATA_KEY: dg.MetadataValue.text(text), **numbers},
        )
    )


def load_ledger(instance: dg.DagsterInstance, log: Optional[Logger] = None) -> IncidentLedger:
    text = read_ledger_text(instance)
    try:
        return IncidentLedger.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # An unreadable ledger must not stop paging for good: keep a copy (once), start afresh.
        if read_ledger_text(instance, UNREADABLE_LEDGER_ASSET_KEY) != (text or ""):
            write_ledger_text(instance, text or "", UNREADABLE_LEDGER_ASSET_KEY)
        if log is not None:
            log.error(f"the incident ledger was unreadable ({type(exc).__name__}: {exc}); kept a copy under "
                      f"{UNREADABLE_LEDGER_ASSET_KEY.to_user_string()} and started a new one (open incidents are forgotten)")
        return IncidentLedger()


def save_ledger(instance: dg.DagsterInstance, ledger: IncidentLedger) -> None:
    write_ledger_text(
        instance, ledger.to_json(), open_incidents=len(ledger.incidents), queued_messages=len(ledger.outbox)
    )


@dataclass
class ApplyReport:
    triggered: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    flush: FlushReport = field(default_factory=FlushReport)

    def describe(self) -> str:
        parts = []
        if self.triggered:
            parts.append(f"triggered {', '.join(self.triggered)}")
        if self.resolved:
            parts.append(f"resolved {', '.join(self.resolved)}")
        if self.suppressed:
            parts.append(f"already open: {', '.join(self.suppressed)}")
        parts.append(f"{len(self.flush.delivered)} message(s) delivered, {self.flush.still_queued} queued")
        if self.flush.deferred:
            parts.append(f"{self.flush.deferred} not tried (the tick's delivery budget was spent)")
        return "; ".join(parts)


def apply(
    instance: dg.DagsterInstance,
    log: Logger,
    alerting: AlertingResource,
    secrets: Sequence[str],
    *,
    problems: Sequence[Alert] = (),
    recoveries: Sequence[Alert] = (),
    now: Optional[float] = None,
    sleep: Callable[[float], None] = time.sleep,
    budget: Optional[DeliveryBudget] = None,
) -> ApplyReport:
    """Record problems (trigger new incidents) and recoveries (resolve open ones), then deliver everything
    queued within ``budget`` (the tick's; a new one from the resource when not given, started before
    waiting for the ledger lock so the wait counts). Never raises for an unreachable destination:
    undelivered messages stay in the ledger."""
    budget = budget if budget is not None else alerting.delivery_budget()
    with _LEDGER_LOCK:
        return _apply(instance, log, alerting, secrets, problems, recoveries, now, sleep, budget)


def _apply(instance, log, alerting, secrets, problems, recoveries, now, sleep, budget) -> ApplyReport:
    now = time.time() if now is None else now
    report = ApplyReport()
    ledger = load_ledger(instance, log)
    before = ledger.to_json()
    destinations = alerting.destination_names()
    for alert in problems:
        decision = ledger.problem(alert, now)
        if decision.action is None:
            report.suppressed.append(alert.dedup_key)
            log.info(decision.reason)
            continue
        report.triggered.append(alert.dedup_key)
        log.info(f"{decision.reason}: [{alert.severity}] {alert.summary}")
        _enqueue(ledger, destinations, decision.action, alert, now, log)
    for alert in recoveries:
        decision = ledger.recovery(alert.dedup_key)
        if decision.action is None:
            continue
        report.resolved.append(alert.dedup_key)
        log.info(f"{decision.reason}: {alert.summary}")
        _enqueue(ledger, destinations, decision.action, alert, now, log)
    for gone in ledger.drop_destinations_not_in(set(destinations)):
        log.warning(f"dropped a queued {gone.action} for {gone.alert.get('dedup_key')}: destination "
                    f"{gone.destination} is no longer configured")
    for expired in ledger.expire(now, alerting.max_undelivered_age_hours * 3600):
        log.error(f"gave up on {expired.destination} {expired.action} for {expired.alert.get('dedup_key')} after "
                  f"{expired.attempts} attempt(s) over {alerting.max_undelivered_age_hours:g} h: {expired.last_error}")
    if ledger.outbox:
        notifiers = alerting.notifiers(secrets, on_error=log.error)
        try:
            report.flush = flush_outbox(
                ledger,
                notifiers,
                attempts=alerting.delivery_attempts,
                backoff_s=alerting.retry_backoff_seconds,
                timeouts=alerting.delivery_timeouts(),
                budget=budget,
                sleep=sleep,
                log=log,
            )
        finally:
            for notifier in notifiers:
                notifier.close()
    if ledger.to_json() != before:  # most ticks change nothing: no write
        save_ledger(instance, ledger)
    return report


def _enqueue(ledger: IncidentLedger, destinations: list[str], action: str, alert: Alert, now: float, log: Logger) -> None:
    if not destinations:
        log.warning(
            f"no alert destination is configured (LOYALTY_PAGERDUTY_ROUTING_KEY, LOYALTY_SLACK_TOKEN, "
            f"LOYALTY_ALERT_WEBHOOK_URL); {action} for {alert.dedup_key} is only logged: {alert.summary}"
        )
        return
    for dropped in ledger.enqueue(destinations, action, alert, now):
        log.error(f"outbox full: dropped undelivered {dropped.destination} {dropped.action} for "
                  f"{dropped.alert.get('dedup_key')}")

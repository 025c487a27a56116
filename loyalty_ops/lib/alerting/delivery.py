"""Delivery of the ledger's outbox, bounded in time.

A sensor tick must return well inside Dagster's sensor timeout (60 s by default), whatever the endpoints
do. Three bounds keep it there:

* every HTTP request has a connect timeout and a read timeout of a few seconds (:class:`DeliveryTimeouts`);
* a destination that did not answer in time is not tried again in the same tick (an endpoint that hangs
  once hangs again two seconds later), and one that failed after its retries is left alone for the rest
  of the tick too;
* the whole tick shares one :class:`DeliveryBudget` (20 s by default): a request never waits past the
  budget, no retry starts that cannot finish inside it, and once it is spent the remaining messages are
  not tried.

A message that was not delivered is never lost: it stays in the outbox, in order, for the next tick (the
retry sensor runs every minute).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional, Sequence

from loyalty_ops.lib.alerting.alerts import Alert
from loyalty_ops.lib.alerting.incidents import IncidentLedger, PendingDelivery
from loyalty_ops.lib.alerting.notifiers import DeliveryError, DeliveryTimeouts, Logger, Notifier
from loyalty_ops.lib.alerting.scrub import scrub_text
from loyalty_ops.lib.retry import RetryPolicy

# Below this much budget left, a request is not started (it could not get an answer anyway).
MIN_ATTEMPT_SECONDS = 0.05


class DeliveryBudget:
    """The time one sensor tick may spend delivering, shared by every flush of that tick (a run-status
    sensor delivers once per failed run), and the destinations that already failed in it. The clock
    starts when the budget is made, so time spent waiting for the ledger lock counts too."""

    def __init__(self, seconds: Optional[float], clock: Callable[[], float] = time.monotonic):
        if seconds is not None and seconds <= 0:
            raise ValueError(f"the delivery budget must be greater than 0 seconds, got {seconds!r}")
        self.seconds = seconds
        self._clock = clock
        self._started = clock()
        self.failed_destinations: dict[str, str] = {}  # destination -> why it is left alone this tick

    def spent(self) -> float:
        return self._clock() - self._started

    def remaining(self) -> float:
        if self.seconds is None:
            return math.inf
        return max(0.0, self.seconds - self.spent())

    def exhausted(self) -> bool:
        return self.remaining() < MIN_ATTEMPT_SECONDS


@dataclasses.dataclass
class FlushReport:
    delivered: list[PendingDelivery] = dataclasses.field(default_factory=list)
    failed: list[PendingDelivery] = dataclasses.field(default_factory=list)  # head of line, still queued
    deferred: int = 0  # not tried: the tick's delivery budget was spent
    still_queued: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.deferred


@dataclasses.dataclass
class _Outcome:
    error: Optional[str] = None
    timed_out: bool = False
    out_of_budget: bool = False  # stopped (or never started) because the budget was spent
    tries: int = 0


def deliver_once_with_retries(
    notifier: Notifier,
    item: PendingDelivery,
    *,
    attempts: int,
    backoff_s: float,
    timeouts: DeliveryTimeouts,
    budget: DeliveryBudget,
    sleep: Callable[[float], None],
    log: Logger,
) -> _Outcome:
    """Try one message up to ``attempts`` times within the budget. A timeout is not retried."""
    alert = Alert.from_dict(item.alert)
    outcome = _Outcome()
    policy = RetryPolicy(max_attempts=max(1, attempts), delay_s=backoff_s, backoff=2.0)

    def room_for_a_retry(attempt: int, delay_s: float) -> bool:
        if delay_s + MIN_ATTEMPT_SECONDS >= budget.remaining():
            outcome.out_of_budget = True
            return False
        log.warning(
            f"{notifier.name}: {item.action} for {alert.dedup_key} failed (attempt {attempt - 1} of {attempts}): "
            f"{outcome.error}; retrying in {delay_s:g} s"
        )
        return True

    for attempt in policy.attempts(before_retry=room_for_a_retry, sleep=sleep):
        if budget.exhausted():
            outcome.out_of_budget = True
            return outcome
        item.attempts += 1
        outcome.tries += 1
        try:
            notifier.send(item.action, alert, timeouts.within(budget.remaining()))
            outcome.error = None
            return outcome
        except DeliveryError as exc:
            outcome.error, outcome.timed_out = str(exc), exc.timed_out
        except Exception as exc:  # a bug or an unexpected library error must not crash the sensor
            outcome.error, outcome.timed_out = scrub_text(f"{notifier.name}: {type(exc).__name__}: {exc}"), False
        if outcome.timed_out or policy.is_last(attempt):
            return outcome
    return outcome


def flush_outbox(
    ledger: IncidentLedger,
    notifiers: Sequence[Notifier],
    *,
    attempts: int = 3,
    backoff_s: float = 1.0,
    timeouts: DeliveryTimeouts = DeliveryTimeouts(),
    budget: Optional[DeliveryBudget] = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Logger,
) -> FlushReport:
    """Deliver queued messages in order, per destination, within ``budget`` (none: unbounded). A
    destination that still fails keeps that message and everything queued after it for the next tick;
    messages the budget leaves no time for stay queued too."""
    budget = budget if budget is not None else DeliveryBudget(None)
    report = FlushReport()
    by_name = {n.name: n for n in notifiers}
    remaining: list[PendingDelivery] = []
    for item in ledger.outbox:
        notifier = by_name.get(item.destination)
        if notifier is None or item.destination in budget.failed_destinations:
            remaining.append(item)
            continue
        if budget.exhausted():
            remaining.append(item)
            report.deferred += 1
            continue
        outcome = deliver_once_with_retries(
            notifier, item, attempts=attempts, backoff_s=backoff_s, timeouts=timeouts, budget=budget,
            sleep=sleep, log=log,
        )
        if outcome.error is None and not outcome.out_of_budget:
            report.delivered.append(item)
            log.info(f"{item.destination}: sent {item.action} for {item.alert.get('dedup_key')}")
            continue
        remaining.append(item)
        if outcome.error is None:  # not even tried: the budget ran out just now
            report.deferred += 1
            continue
        item.last_error = outcome.error
        report.failed.append(item)
        if outcome.timed_out:
            why = f"no answer in time ({outcome.error}); a hanging endpoint is not tried again in this tick"
        elif outcome.out_of_budget:
            why = f"{outcome.error}; the tick's delivery budget leaves no time for another try"
        else:
            why = outcome.error
        budget.failed_destinations[item.destination] = why
        log.error(
            f"{item.destination}: could not send {item.action} for {item.alert.get('dedup_key')} after "
            f"{outcome.tries} attempt(s): {why}. It stays queued and is retried on the next tick."
        )
    if report.deferred:
        log.warning(
            f"the delivery budget of {budget.seconds:g} s for this tick is spent ({budget.spent():.1f} s used): "
            f"{report.deferred} message(s) were not tried and stay queued for the next tick"
        )
    ledger.outbox = remaining
    report.still_queued = len(remaining)
    return report

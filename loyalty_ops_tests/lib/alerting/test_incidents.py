"""The ledger: page once per incident, resolve only what is open, keep undelivered messages."""

from loyalty_ops.lib.alerting.alerts import RunFailureFacts, run_failure_alert
from loyalty_ops.lib.alerting.incidents import IncidentLedger


def _alert(job="nightly_backup_job", run_id="r-1"):
    facts = RunFailureFacts(job, run_id, {"loyalty_ops/database_lock": "loyalty"}, 1000.0, "step", "boom")
    return run_failure_alert(facts, "http://d")


def test_two_failures_open_one_incident_and_a_recovery_resolves_it():
    ledger = IncidentLedger()
    first = ledger.problem(_alert(run_id="r-1"), 10.0)
    second = ledger.problem(_alert(run_id="r-2"), 20.0)
    assert first.action == "trigger"
    assert second.action is None and second.incident.occurrences == 2
    assert ledger.recovery(_alert().dedup_key).action == "resolve"
    assert ledger.recovery(_alert().dedup_key).action is None  # nothing open any more
    assert ledger.problem(_alert(run_id="r-3"), 30.0).action == "trigger"  # a new incident


def test_incidents_are_per_job():
    ledger = IncidentLedger()
    assert ledger.problem(_alert("a_job"), 1.0).action == "trigger"
    assert ledger.problem(_alert("b_job"), 1.0).action == "trigger"


def test_json_round_trip_keeps_incidents_and_outbox():
    ledger = IncidentLedger()
    alert = _alert()
    ledger.problem(alert, 5.0)
    ledger.enqueue(["pagerduty", "slack"], "trigger", alert, 5.0)
    again = IncidentLedger.from_json(ledger.to_json())
    assert again.is_open(alert.dedup_key)
    assert [(p.destination, p.action) for p in again.outbox] == [("pagerduty", "trigger"), ("slack", "trigger")]
    assert IncidentLedger.from_json(None).incidents == {}


def test_outbox_expiry_and_removed_destinations():
    ledger = IncidentLedger()
    ledger.enqueue(["pagerduty"], "trigger", _alert(), 0.0)
    ledger.enqueue(["slack"], "trigger", _alert(), 100.0)
    assert [p.destination for p in ledger.expire(150.0, 120.0)] == ["pagerduty"]
    assert [p.destination for p in ledger.drop_destinations_not_in({"pagerduty"})] == ["slack"]
    assert ledger.outbox == []

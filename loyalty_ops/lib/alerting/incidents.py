"""Incident state: which problems are open, and which deliveries still have to be made.

The ledger is what makes "page once" true on every destination, not only on PagerDuty (which
de-duplicates by ``dedup_key`` itself): a second failure of a job whose incident is open is counted,
not sent again; a recovery is sent only for an open incident. Deliveries go through an outbox kept in
the same document, so an unreachable endpoint delays a page instead of losing it: the next flush
retries it, in order per destination, until it is delivered or too old.

The ledger is a plain JSON document; the Dagster side stores it in the instance.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from loyalty_ops.lib.alerting.alerts import RESOLVE, TRIGGER, Alert

MAX_OUTBOX = 500  # beyond this the oldest undelivered messages are dropped (and logged)


@dataclasses.dataclass
class Incident:
    dedup_key: str
    opened_at: float
    last_seen_at: float
    occurrences: int
    alert: dict[str, Any]


@dataclasses.dataclass
class PendingDelivery:
    """One message for one destination that has not been accepted yet."""

    destination: str
    action: str  # trigger | resolve
    alert: dict[str, Any]
    queued_at: float
    attempts: int = 0
    last_error: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Optional[str]  # trigger, resolve, or None (nothing to send)
    reason: str
    incident: Optional[Incident] = None


@dataclasses.dataclass
class IncidentLedger:
    incidents: dict[str, Incident] = dataclasses.field(default_factory=dict)
    outbox: list[PendingDelivery] = dataclasses.field(default_factory=list)

    # ---- decisions ---------------------------------------------------------------------------------

    def problem(self, alert: Alert, now: float) -> Decision:
        """A failure was seen. A new incident is triggered; a repeat joins the open one and is not sent."""
        open_incident = self.incidents.get(alert.dedup_key)
        if open_incident is not None:
            open_incident.occurrences += 1
            open_incident.last_seen_at = now
            return Decision(
                None,
                f"incident {alert.dedup_key} is already open since {open_incident.opened_at:.0f} "
                f"(occurrence {open_incident.occurrences}); not paging again",
                open_incident,
            )
        incident = Incident(alert.dedup_key, now, now, 1, alert.to_dict())
        self.incidents[alert.dedup_key] = incident
        return Decision(TRIGGER, f"opened incident {alert.dedup_key}", incident)

    def recovery(self, dedup_key: str) -> Decision:
        """The problem is gone. An open incident is resolved; with none open there is nothing to send."""
        incident = self.incidents.pop(dedup_key, None)
        if incident is None:
            return Decision(None, f"no open incident {dedup_key}; nothing to resolve")
        return Decision(
            RESOLVE, f"resolved incident {dedup_key} after {incident.occurrences} failure(s)", incident
        )

    def is_open(self, dedup_key: str) -> bool:
        return dedup_key in self.incidents

    # ---- outbox ------------------------------------------------------------------------------------

    def enqueue(self, destinations: list[str], action: str, alert: Alert, now: float) -> list[PendingDelivery]:
        """Queue one message per destination; returns the messages dropped to stay under MAX_OUTBOX."""
        for destination in destinations:
            self.outbox.append(PendingDelivery(destination, action, alert.to_dict(), now))
        dropped: list[PendingDelivery] = []
        while len(self.outbox) > MAX_OUTBOX:
            dropped.append(self.outbox.pop(0))
        return dropped

    def expire(self, now: float, max_age_s: float) -> list[PendingDelivery]:
        """Drop messages that could not be delivered for ``max_age_s``; returns them so they are logged."""
        expired = [p for p in self.outbox if now - p.queued_at > max_age_s]
        self.outbox = [p for p in self.outbox if now - p.queued_at <= max_age_s]
        return expired

    def drop_destinations_not_in(self, destinations: set[str]) -> list[PendingDelivery]:
        """Messages for a destination that is no longer configured can never be delivered."""
        gone = [p for p in self.outbox if p.destination not in destinations]
        self.outbox = [p for p in self.outbox if p.destination in destinations]
        return gone

    # ---- storage -----------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "incidents": {k: dataclasses.asdict(v) for k, v in sorted(self.incidents.items())},
                "outbox": [dataclasses.asdict(p) for p in self.outbox],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: Optional[str]) -> "IncidentLedger":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            incidents={k: Incident(**v) for k, v in data.get("incidents", {}).items()},
            outbox=[PendingDelivery(**p) for p in data.get("outbox", [])],
        )

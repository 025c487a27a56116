"""What a page says: alerts built from a failed run, a stale backup or a failed check. How each destination
(PagerDuty Events v2, Slack, a JSON webhook) receives an alert is in ``loyalty_ops.lib.alerting.notifiers``,
beside the notifier that sends it.

Pure data: the Dagster sensors gather the facts (job, run id, failing step, error, tags) and call the
builders here, so the exact wording is unit-tested without Dagster.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Optional

from loyalty_ops.lib.alerting.scrub import scrub_payload, scrub_text
from loyalty_ops.lib.concurrency import DATABASE_LOCK_TAG

SEVERITY_TAG = "loyalty_ops/severity"
SEVERITIES = ("critical", "error", "warning", "info")  # PagerDuty Events v2's set
CRITICAL_JOB_WORDS = ("backup", "restore")

KIND_RUN_FAILURE = "run_failure"
KIND_BACKUP_STALE = "backup_stale"
KIND_CHECK_FAILED = "check_failed"

TRIGGER = "trigger"
RESOLVE = "resolve"

SUMMARY_MAX = 1024  # PagerDuty truncates payload.summary at 1024 characters
ERROR_MAX = 4000
DEDUP_KEY_MAX = 255
SOURCE = "loyalty_ops"


@dataclasses.dataclass(frozen=True)
class Alert:
    """One problem (or its recovery) as every destination needs it. Already scrubbed of secrets."""

    dedup_key: str
    kind: str
    summary: str
    severity: str
    component: str  # the job, or the asset check, that has the problem
    database: str
    link: Optional[str] = None  # the run in the Dagster UI
    link_text: str = "Open the run in Dagster"
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    timestamp: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Alert":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def job_severity(tags: Mapping[str, str], job_name: str) -> str:
    """The run's ``loyalty_ops/severity`` tag; untagged jobs are critical when they back up or restore,
    warning otherwise."""
    tagged = (tags.get(SEVERITY_TAG) or "").strip().lower()
    if tagged in SEVERITIES:
        return tagged
    name = job_name.lower()
    return "critical" if any(word in name for word in CRITICAL_JOB_WORDS) else "warning"


def run_database(tags: Mapping[str, str], fallback: Optional[str]) -> str:
    """The database a run works on: its ``loyalty_ops/database_lock`` tag, else the configured target."""
    return (tags.get(DATABASE_LOCK_TAG) or fallback or "unknown").strip()


def _key(*parts: str) -> str:
    key = "/".join(part.replace("/", "_") for part in parts)
    return key[:DEDUP_KEY_MAX]


def run_dedup_key(job_name: str, database: str) -> str:
    """One incident per job and database: every failure of the job joins it, the next success resolves it."""
    return _key(SOURCE, "run", job_name, database)


def backup_freshness_dedup_key(database: str) -> str:
    return _key(SOURCE, "backup_freshness", database)


def check_dedup_key(asset_key: str, check_name: str, database: str) -> str:
    return _key(SOURCE, "check", asset_key, check_name, database)


def run_url(webserver_base_url: str, run_id: str) -> str:
    return f"{webserver_base_url.rstrip('/')}/runs/{run_id}"


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _headline(text: str) -> str:
    """The first line of an error; when it announces a list ("... failed with ERROR severity:"), with the
    list's first line too."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def clean_error(message: str) -> str:
    """A Dagster error message without the exception class prefix Dagster adds
    (``dagster._core.definitions.events.Failure: ...``)."""
    text = (message or "").strip()
    first = _first_line(text)
    head, sep, rest = first.partition(": ")
    if sep and "." in head and " " not in head:  # a dotted exception class name
        text = text.replace(first, rest.strip(), 1)
    return text.strip()


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclasses.dataclass(frozen=True)
class RunFailureFacts:
    """What the run-failure sensor knows about one failed run."""

    job_name: str
    run_id: str
    tags: Mapping[str, str]
    failed_at: float
    failing_step: Optional[str]  # None when the run failed outside a step (never started, worker died)
    error: str  # the step's error message, or the run failure's message
    default_database: Optional[str] = None
    failed_checks: tuple[str, ...] = ()  # "asset:check: description" of checks that failed in the run


def run_failure_alert(facts: RunFailureFacts, webserver_base_url: str, secrets: Iterable[str] = ()) -> Alert:
    secrets = tuple(secrets)
    database = run_database(facts.tags, facts.default_database)
    severity = job_severity(facts.tags, facts.job_name)
    error = truncate(scrub_text(clean_error(facts.error), secrets), ERROR_MAX) or "no error message was recorded"
    where = f"step {facts.failing_step}" if facts.failing_step else "run (no step failed)"
    summary = truncate(f"{facts.job_name} failed on {database} at {where}: {_headline(error)}", SUMMARY_MAX)
    link = run_url(webserver_base_url, facts.run_id)
    details = {
        "job": facts.job_name,
        "database": database,
        "run_id": facts.run_id,
        "run_url": link,
        "failing_step": facts.failing_step,
        "error": error,
        "severity": severity,
        "failed_at": iso_utc(facts.failed_at),
    }
    if facts.failed_checks:
        details["failed_checks"] = [truncate(c, 500) for c in facts.failed_checks[:20]]
    return Alert(
        dedup_key=run_dedup_key(facts.job_name, database),
        kind=KIND_RUN_FAILURE,
        summary=scrub_text(summary, secrets),
        severity=severity,
        component=facts.job_name,
        database=database,
        link=link,
        details=scrub_payload(details, secrets),
        timestamp=iso_utc(facts.failed_at),
    )


def run_recovery_alert(
    job_name: str, run_id: str, tags: Mapping[str, str], succeeded_at: float, webserver_base_url: str,
    default_database: Optional[str] = None,
) -> Alert:
    """The resolve for a job's incident: its next successful run."""
    database = run_database(tags, default_database)
    link = run_url(webserver_base_url, run_id)
    return Alert(
        dedup_key=run_dedup_key(job_name, database),
        kind=KIND_RUN_FAILURE,
        summary=f"Resolved: {job_name} succeeded on {database}",
        severity=job_severity(tags, job_name),
        component=job_name,
        database=database,
        link=link,
        details={"job": job_name, "database": database, "run_id": run_id, "run_url": link,
                 "succeeded_at": iso_utc(succeeded_at)},
        timestamp=iso_utc(succeeded_at),
    )


@dataclasses.dataclass(frozen=True)
class BackupFreshness:
    """Whether the newest successful backup is recent enough; ``stale`` decides the page."""

    stale: bool
    age_hours: Optional[float]  # None: no successful backup was ever recorded
    max_age_hours: float
    last_backup_at: Optional[float]
    watched_since: float

    @property
    def reason(self) -> str:
        if self.age_hours is None:
            waited = self.max_age_hours if self.stale else None
            return (
                f"no successful backup has ever been recorded (watched for more than {waited:g} h)"
                if waited is not None
                else "no successful backup recorded yet; still within the allowed age"
            )
        return f"the newest successful backup is {self.age_hours:.1f} h old (limit {self.max_age_hours:g} h)"


def backup_freshness(
    last_backup_at: Optional[float], now: float, max_age_hours: float, watched_since: float
) -> BackupFreshness:
    """A backup is stale when the newest successful one is older than ``max_age_hours``. With no backup at
    all, the clock starts when the sensor first looked (``watched_since``), so a fresh install does not
    page at once but a schedule that never runs pages after ``max_age_hours``."""
    if last_backup_at is None:
        return BackupFreshness(
            stale=(now - watched_since) / 3600 > max_age_hours,
            age_hours=None,
            max_age_hours=max_age_hours,
            last_backup_at=None,
            watched_since=watched_since,
        )
    age = max(0.0, (now - last_backup_at) / 3600)
    return BackupFreshness(age > max_age_hours, age, max_age_hours, last_backup_at, watched_since)


def backup_stale_alert(
    freshness: BackupFreshness, database: str, now: float, webserver_base_url: str,
    last_backup_run_id: Optional[str] = None, last_backup_file: Optional[str] = None,
    freshness_policy_state: Optional[str] = None,
) -> Alert:
    link = (
        run_url(webserver_base_url, last_backup_run_id)
        if last_backup_run_id
        else f"{webserver_base_url.rstrip('/')}/assets/database_backup"
    )
    return Alert(
        dedup_key=backup_freshness_dedup_key(database),
        kind=KIND_BACKUP_STALE,
        summary=truncate(f"No successful backup of {database}: {freshness.reason}", SUMMARY_MAX),
        severity="critical",
        component="database_backup",
        database=database,
        link=link,
        link_text="Last successful backup run" if last_backup_run_id else "The database_backup asset",
        details={
            "database": database,
            "age_hours": round(freshness.age_hours, 2) if freshness.age_hours is not None else None,
            "max_age_hours": freshness.max_age_hours,
            "last_backup_at": iso_utc(freshness.last_backup_at) if freshness.last_backup_at else None,
            "last_backup_run_id": last_backup_run_id,
            "last_backup_file": last_backup_file,
            "freshness_policy_state": freshness_policy_state,
            "checked_at": iso_utc(now),
        },
        timestamp=iso_utc(now),
    )


def backup_fresh_alert(freshness: BackupFreshness, database: str, now: float, webserver_base_url: str,
                       run_id: Optional[str]) -> Alert:
    return Alert(
        dedup_key=backup_freshness_dedup_key(database),
        kind=KIND_BACKUP_STALE,
        summary=f"Resolved: {database} has a successful backup again ({freshness.age_hours or 0:.1f} h old)",
        severity="critical",
        component="database_backup",
        database=database,
        link=run_url(webserver_base_url, run_id) if run_id else None,
        details={"database": database, "age_hours": round(freshness.age_hours or 0.0, 2), "run_id": run_id},
        timestamp=iso_utc(now),
    )


@dataclasses.dataclass(frozen=True)
class CheckFacts:
    asset_key: str
    check_name: str
    passed: bool
    check_severity: str  # "ERROR" or "WARN" (Dagster's AssetCheckSeverity)
    blocking: bool
    run_id: str
    evaluated_at: float
    description: Optional[str]
    run_tags: Mapping[str, str]
    metadata: Mapping[str, Any]
    default_database: Optional[str] = None


def check_pager_severity(facts: CheckFacts, *, page_warn: bool = True) -> Optional[str]:
    """The pager severity of a failed check, or None when it should not page.

    An explicit ``loyalty_ops/severity`` in the check's result wins (a health check's configured severity
    for a threshold breach). Otherwise an ERROR check pages at ``error``, or ``critical`` when its run is
    tagged critical (the backup's blocking integrity checks); a WARN check pages at ``warning`` unless
    ``page_warn`` is off, in which case only blocking WARN checks page."""
    explicit = str(facts.metadata.get(SEVERITY_TAG) or "").strip().lower()
    if explicit in SEVERITIES:
        return explicit
    run_severity = (facts.run_tags.get(SEVERITY_TAG) or "").strip().lower()
    if facts.check_severity.upper() == "ERROR":
        return "critical" if run_severity == "critical" else "error"
    if page_warn or facts.blocking:
        return "warning"
    return None


def check_database(facts: CheckFacts) -> str:
    value = facts.metadata.get("database")
    return run_database(facts.run_tags, str(value) if value else facts.default_database)


def check_failed_alert(facts: CheckFacts, severity: str, webserver_base_url: str, secrets: Iterable[str] = ()) -> Alert:
    secrets = tuple(secrets)
    database = check_database(facts)
    description = truncate(scrub_text(facts.description or "", secrets), ERROR_MAX)
    kind_text = "blocking check" if facts.blocking else "check"
    summary = f"{kind_text} {facts.check_name} on {facts.asset_key} failed for {database}"
    if description:
        summary += f": {_first_line(description)}"
    link = run_url(webserver_base_url, facts.run_id)
    simple_metadata = {
        k: v for k, v in facts.metadata.items() if isinstance(v, (str, int, float, bool)) and k != SEVERITY_TAG
    }
    return Alert(
        dedup_key=check_dedup_key(facts.asset_key, facts.check_name, database),
        kind=KIND_CHECK_FAILED,
        summary=scrub_text(truncate(summary, SUMMARY_MAX), secrets),
        severity=severity,
        component=f"{facts.asset_key}:{facts.check_name}",
        database=database,
        link=link,
        details=scrub_payload(
            {
                "asset": facts.asset_key,
                "check": facts.check_name,
                "blocking": facts.blocking,
                "check_severity": facts.check_severity,
                "database": database,
                "run_id": facts.run_id,
                "run_url": link,
                "description": description,
                "evaluated_at": iso_utc(facts.evaluated_at),
                "metadata": simple_metadata,
            },
            secrets,
        ),
        timestamp=iso_utc(facts.evaluated_at),
    )


def check_passed_alert(facts: CheckFacts, webserver_base_url: str) -> Alert:
    database = check_database(facts)
    return Alert(
        dedup_key=check_dedup_key(facts.asset_key, facts.check_name, database),
        kind=KIND_CHECK_FAILED,
        summary=f"Resolved: check {facts.check_name} on {facts.asset_key} passes again for {database}",
        severity="info",
        component=f"{facts.asset_key}:{facts.check_name}",
        database=database,
        link=run_url(webserver_base_url, facts.run_id),
        details={"asset": facts.asset_key, "check": facts.check_name, "database": database, "run_id": facts.run_id},
        timestamp=iso_utc(facts.evaluated_at),
    )

"""The guide's morning container checks (`docker-compose ps`, `docker stats --no-stream`) as pure logic:
turn the engine's inspect and stats documents into :class:`ContainerSnapshot` and evaluate them against
the guide's alert thresholds (memory above 85%, a container restarting, unhealthy or stopped).

No Docker client here: :mod:`loyalty_ops.lib.containers.engine` collects the documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence

from loyalty_ops.lib.formatting import human_bytes, markdown_code, markdown_table

MEMORY_PERCENT_LIMIT = 85.0  # the guide's "When to Alert: Memory usage > 85%"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_ONEOFF_LABEL = "com.docker.compose.oneoff"


@dataclass(frozen=True)
class ContainerSnapshot:
    """One container's state and resource use at one moment."""

    name: str
    id: str
    status: str  # created, running, restarting, paused, exited, dead
    health: Optional[str]  # healthy, unhealthy, starting; None when the image has no healthcheck
    restart_count: int
    uptime_s: Optional[float]
    memory_bytes: Optional[int]
    memory_limit_bytes: Optional[int]
    cpu_percent: Optional[float]
    image: str = ""
    service: Optional[str] = None
    exit_code: Optional[int] = None
    oneoff: bool = False

    @property
    def memory_percent(self) -> Optional[float]:
        if self.memory_bytes is None or not self.memory_limit_bytes:
            return None
        return 100.0 * self.memory_bytes / self.memory_limit_bytes


@dataclass(frozen=True)
class Finding:
    container: str
    check: str  # memory, restarting, unhealthy, stopped
    message: str


@dataclass
class ContainerReport:
    containers: list[ContainerSnapshot]
    findings: list[Finding] = field(default_factory=list)
    memory_limit_percent: float = MEMORY_PERCENT_LIMIT

    @property
    def passed(self) -> bool:
        return not self.findings

    def failing(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def markdown(self) -> str:
        rows = []
        for c in self.containers:
            mem = human_bytes(c.memory_bytes) if c.memory_bytes is not None else "-"
            pct = f"{c.memory_percent:.1f}" if c.memory_percent is not None else "-"
            cpu = f"{c.cpu_percent:.1f}" if c.cpu_percent is not None else "-"
            rows.append((markdown_code(c.name), c.service or "-", c.status, c.health or "-", c.restart_count,
                         format_uptime(c.uptime_s), mem, pct, cpu))
        lines = [markdown_table(
            ["container", "service", "status", "health", "restarts", "uptime", "memory", "mem %", "CPU %"], rows, "llllrrrrr"
        )]
        if self.findings:
            lines += ["", "**Findings**", ""] + [f"- `{f.container}`: {f.message}" for f in self.findings]
        else:
            lines += ["", f"All {len(self.containers)} containers running, none unhealthy or restarting, "
                      f"memory below {self.memory_limit_percent:.0f}%."]
        return "\n".join(lines)


def format_uptime(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def parse_engine_time(text: Optional[str]) -> Optional[datetime]:
    """RFC 3339 with nanoseconds (``2026-11-27T08:14:43.52003485Z``); the zero time means never."""
    if not text or text.startswith("0001-01-01"):
        return None
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, tail = text.split(".", 1)
        digits = "".join(ch for ch in tail if ch.isdigit())
        zone = tail[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def memory_usage(stats: Mapping[str, Any]) -> tuple[Optional[int], Optional[int]]:
    """(used bytes, limit bytes) the way ``docker stats`` shows them: usage minus inactive page cache."""
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage")
    if usage is None:
        return None, None
    detail = mem.get("stats") or {}
    # cgroup v1 reports total_inactive_file, v2 inactive_file; older engines subtracted "cache".
    for key in ("total_inactive_file", "inactive_file"):
        if key in detail and detail[key] < usage:
            usage -= detail[key]
            break
    else:
        if "cache" in detail and detail["cache"] < usage:
            usage -= detail["cache"]
    limit = mem.get("limit") or None
    return int(usage), (int(limit) if limit else None)


def _cpu_totals(sample: Mapping[str, Any]) -> tuple[Optional[int], Optional[int], int]:
    usage = (sample.get("cpu_usage") or {}).get("total_usage")
    system = sample.get("system_cpu_usage")
    cpus = sample.get("online_cpus") or len((sample.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    return usage, system, cpus


def cpu_percent(stats: Mapping[str, Any], previous: Optional[Mapping[str, Any]] = None) -> Optional[float]:
    """CPU use as ``docker stats`` computes it (100% = one core). Uses the document's own ``precpu_stats``
    when the engine filled it, otherwise an earlier sample of the same container."""
    if previous is None and needs_second_sample(stats):
        return None  # an empty precpu_stats would give the average since the container started
    now_usage, now_system, cpus = _cpu_totals(stats.get("cpu_stats") or {})
    before = previous.get("cpu_stats") if previous else stats.get("precpu_stats")
    before_usage, before_system, _ = _cpu_totals(before or {})
    if None in (now_usage, now_system, before_usage, before_system):
        return None
    system_delta = now_system - before_system  # type: ignore[operator]
    cpu_delta = now_usage - before_usage  # type: ignore[operator]
    if system_delta <= 0 or cpu_delta < 0:
        return None
    return round(100.0 * cpu_delta / system_delta * cpus, 2)


def needs_second_sample(stats: Mapping[str, Any]) -> bool:
    """True when the engine left ``precpu_stats`` empty (podman does), so CPU needs two samples."""
    pre = stats.get("precpu_stats") or {}
    return not pre.get("system_cpu_usage") or not (pre.get("cpu_usage") or {}).get("total_usage")


def snapshot_from(
    attrs: Mapping[str, Any],
    stats: Optional[Mapping[str, Any]],
    *,
    now: datetime,
    previous_stats: Optional[Mapping[str, Any]] = None,
) -> ContainerSnapshot:
    """Build a snapshot from ``inspect`` (``attrs``) and one ``stats`` document (None if not running)."""
    state = attrs.get("State") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    status = state.get("Status") or ("running" if state.get("Running") else "unknown")
    if state.get("Restarting"):
        status = "restarting"
    health = (state.get("Health") or {}).get("Status") or None
    started = parse_engine_time(state.get("StartedAt"))
    uptime = (now - started).total_seconds() if started and status == "running" else None
    memory, limit = memory_usage(stats) if stats else (None, None)
    cpu = cpu_percent(stats, previous_stats) if stats else None
    return ContainerSnapshot(
        name=str(attrs.get("Name") or "").lstrip("/") or str(attrs.get("Id", ""))[:12],
        id=str(attrs.get("Id") or ""),
        status=status,
        health=health,
        restart_count=int(attrs.get("RestartCount") or 0),
        uptime_s=max(uptime, 0.0) if uptime is not None else None,
        memory_bytes=memory,
        memory_limit_bytes=limit,
        cpu_percent=cpu,
        image=str((attrs.get("Config") or {}).get("Image") or ""),
        service=labels.get(COMPOSE_SERVICE_LABEL),
        exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
        oneoff=str(labels.get(COMPOSE_ONEOFF_LABEL, "")).lower() == "true",
    )


def evaluate(
    containers: Sequence[ContainerSnapshot], *, memory_limit_percent: float = MEMORY_PERCENT_LIMIT
) -> ContainerReport:
    """Findings at the guide's thresholds: memory above the limit, restarting, unhealthy, stopped."""
    findings: list[Finding] = []
    for c in containers:
        if c.oneoff:
            continue  # `docker-compose run` containers are expected to exit
        pct = c.memory_percent
        if pct is not None and pct > memory_limit_percent:
            findings.append(Finding(c.name, "memory", (
                f"memory at {pct:.1f}% of its limit ({human_bytes(c.memory_bytes or 0)} of "
                f"{human_bytes(c.memory_limit_bytes or 0)}), above {memory_limit_percent:.0f}%")))
        if c.status == "restarting":
            findings.append(Finding(c.name, "restarting", f"restarting (restart count {c.restart_count})"))
        if c.health == "unhealthy":
            findings.append(Finding(c.name, "unhealthy", "its healthcheck reports unhealthy"))
        if c.status in ("exited", "dead", "created", "paused"):
            detail = f" with exit code {c.exit_code}" if c.exit_code is not None else ""
            findings.append(Finding(c.name, "stopped", f"{c.status}{detail}, not running"))
    return ContainerReport(list(containers), findings, memory_limit_percent)

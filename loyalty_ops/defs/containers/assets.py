"""``container_health``: the guide's morning `docker-compose ps` and `docker stats --no-stream`, with checks
at its alert thresholds."""

import dagster as dg

from loyalty_ops.defs.containers.resources import ContainerEngine
from loyalty_ops.lib.containers.engine import ContainerEngineError, snapshots_for
from loyalty_ops.lib.containers.health import ContainerReport, evaluate

OWNERS = ["team:platform"]
CONTAINER_HEALTH_KEY = dg.AssetKey("container_health")

MEMORY_CHECK = "containers_memory_below_limit"
RESTARTING_CHECK = "containers_not_restarting"
HEALTHY_CHECK = "containers_healthy_and_running"

CHECK_SPECS = [
    dg.AssetCheckSpec(MEMORY_CHECK, asset=CONTAINER_HEALTH_KEY,
                      description="No container uses more than 85% of its memory limit (the guide's alert threshold)."),
    dg.AssetCheckSpec(RESTARTING_CHECK, asset=CONTAINER_HEALTH_KEY,
                      description="No container is restarting."),
    dg.AssetCheckSpec(HEALTHY_CHECK, asset=CONTAINER_HEALTH_KEY,
                      description="No container's healthcheck reports unhealthy, and none has stopped."),
]


def _check_result(report: ContainerReport, name: str, kinds: tuple[str, ...]) -> dg.AssetCheckResult:
    failing = [f for f in report.findings if f.check in kinds]
    return dg.AssetCheckResult(
        check_name=name,
        passed=not failing,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{f.container}: {f.message}" for f in failing) or "ok",
        metadata={"failing_containers": dg.MetadataValue.json(sorted({f.container for f in failing}))},
    )


@dg.asset(
    key=CONTAINER_HEALTH_KEY,
    group_name="reports",
    kinds={"docker"},
    owners=OWNERS,
    check_specs=CHECK_SPECS,
)
def container_health(context: dg.AssetExecutionContext, container_engine: ContainerEngine) -> dg.MaterializeResult:
    """Each container of the compose project (LOYALTY_COMPOSE_PROJECT) or list (LOYALTY_CONTAINERS): status,
    health, restart count, uptime, memory and CPU use, read from the Docker API like `docker-compose ps`
    and `docker stats --no-stream`. Checks fail when a container uses more than 85% of its memory limit,
    is restarting, is unhealthy or has stopped."""
    selection = container_engine.selection()
    if not selection.configured:
        raise dg.Failure(
            "no containers to check: set LOYALTY_COMPOSE_PROJECT (the compose project's name) or "
            "LOYALTY_CONTAINERS (comma-separated container names)"
        )
    try:
        snapshots = snapshots_for(
            selection, container_engine.docker_host or None, cpu_sample_s=container_engine.cpu_sample_seconds
        )
    except ContainerEngineError as exc:
        raise dg.Failure(str(exc)) from None
    report = evaluate(snapshots, memory_limit_percent=container_engine.memory_limit_percent)
    for finding in report.findings:
        context.log.warning(f"{finding.container}: {finding.message}")
    context.log.info(f"checked {len(snapshots)} containers of {selection.describe()}: {len(report.findings)} findings")
    per_container = {
        c.name: {
            "status": c.status,
            "health": c.health,
            "restart_count": c.restart_count,
            "uptime_s": round(c.uptime_s, 1) if c.uptime_s is not None else None,
            "memory_bytes": c.memory_bytes,
            "memory_limit_bytes": c.memory_limit_bytes,
            "memory_percent": round(c.memory_percent, 2) if c.memory_percent is not None else None,
            "cpu_percent": c.cpu_percent,
            "service": c.service,
            "image": c.image,
        }
        for c in snapshots
    }
    memory_values = [c.memory_percent for c in snapshots if c.memory_percent is not None]
    return dg.MaterializeResult(
        metadata={
            "selection": selection.describe(),
            "container_count": len(snapshots),
            "running_count": sum(1 for c in snapshots if c.status == "running"),
            "finding_count": len(report.findings),
            "max_memory_percent": round(max(memory_values), 2) if memory_values else 0.0,
            "total_restarts": sum(c.restart_count for c in snapshots),
            "containers": dg.MetadataValue.json(per_container),
            "findings": dg.MetadataValue.json([f.__dict__ for f in report.findings]),
            "report": dg.MetadataValue.md(report.markdown()),
        },
        check_results=[
            _check_result(report, MEMORY_CHECK, ("memory",)),
            _check_result(report, RESTARTING_CHECK, ("restarting",)),
            _check_result(report, HEALTHY_CHECK, ("unhealthy", "stopped")),
        ],
    )

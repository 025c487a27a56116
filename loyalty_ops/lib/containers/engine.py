"""Reading container state from a Docker-compatible engine (the docker SDK): which containers belong to the
compose project (or a named list), their inspect documents and one ``stats`` sample each.

``docker stats --no-stream`` computes CPU from two samples about a second apart; dockerd puts the earlier
one in ``precpu_stats``. Podman leaves it empty, so when it is missing we take a second sample of every
container after ``cpu_sample_s`` (all containers together, one wait).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from loyalty_ops.lib.containers.health import (
    COMPOSE_PROJECT_LABEL,
    ContainerSnapshot,
    needs_second_sample,
    snapshot_from,
)


class ContainerEngineError(RuntimeError):
    """The engine is unreachable or a configured container is missing; the message says what to fix."""


@dataclass(frozen=True)
class ContainerSelection:
    """Which containers to check: a compose project's (by label) and/or explicitly named ones."""

    compose_project: Optional[str] = None
    names: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.compose_project or self.names)

    def describe(self) -> str:
        parts = []
        if self.compose_project:
            parts.append(f"compose project {self.compose_project!r}")
        if self.names:
            parts.append("containers " + ", ".join(self.names))
        return " and ".join(parts) or "nothing"


def parse_names(text: Optional[str]) -> tuple[str, ...]:
    """``LOYALTY_CONTAINERS``: names separated by commas or whitespace."""
    if not text:
        return ()
    return tuple(name for name in text.replace(",", " ").split() if name)


def connect(docker_host: Optional[str] = None, timeout: int = 30):
    import docker

    where = docker_host or "the default socket unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=docker_host, timeout=timeout) if docker_host else docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise ContainerEngineError(
            f"cannot reach the Docker engine at {where}: {exc}. Check that it runs and DOCKER_HOST points at it."
        ) from None
    return client


def _find(client: Any, selection: ContainerSelection) -> list[Any]:
    import docker.errors

    found: dict[str, Any] = {}
    if selection.compose_project:
        label = f"{COMPOSE_PROJECT_LABEL}={selection.compose_project}"
        for container in client.containers.list(all=True, filters={"label": label}):
            found[container.id] = container
        if not found:
            raise ContainerEngineError(
                f"no containers of compose project {selection.compose_project!r} on this engine: check "
                "LOYALTY_COMPOSE_PROJECT (docker-compose ls, or the project's directory name)"
            )
    missing = []
    for name in selection.names:
        try:
            container = client.containers.get(name)
            found[container.id] = container
        except docker.errors.NotFound:
            missing.append(name)
    if missing:
        raise ContainerEngineError(f"containers not found: {', '.join(missing)}; check LOYALTY_CONTAINERS")
    return sorted(found.values(), key=lambda c: c.name)


def _stats(container: Any) -> Optional[dict]:
    try:
        return container.stats(stream=False)
    except Exception:
        return None


def collect_snapshots(
    client: Any, selection: ContainerSelection, *, cpu_sample_s: float = 1.0
) -> list[ContainerSnapshot]:
    """One snapshot per selected container (stats only for running ones)."""
    containers = _find(client, selection)
    for container in containers:
        container.reload()
    running = [c for c in containers if c.status == "running"]
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(running)))) as pool:
        first = dict(zip([c.id for c in running], pool.map(_stats, running)))
        second: dict[str, Optional[dict]] = {}
        again = [c for c in running if first.get(c.id) and needs_second_sample(first[c.id])]  # type: ignore[arg-type]
        if again and cpu_sample_s > 0:
            time.sleep(cpu_sample_s)
            second = dict(zip([c.id for c in again], pool.map(_stats, again)))
    now = datetime.now(timezone.utc)
    snapshots = []
    for container in containers:
        if container.id in second and second[container.id]:
            snap = snapshot_from(container.attrs, second[container.id], now=now, previous_stats=first[container.id])
        else:
            snap = snapshot_from(container.attrs, first.get(container.id), now=now)
        snapshots.append(snap)
    return snapshots


def snapshots_for(
    selection: ContainerSelection, docker_host: Optional[str] = None, *, cpu_sample_s: float = 1.0
) -> list[ContainerSnapshot]:
    client = connect(docker_host)
    try:
        return collect_snapshots(client, selection, cpu_sample_s=cpu_sample_s)
    finally:
        client.close()


__all__: Sequence[str] = (
    "ContainerEngineError", "ContainerSelection", "collect_snapshots", "connect", "parse_names",
    "snapshots_for",
)

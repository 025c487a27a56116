"""The containers domain's own settings (resource key ``container_engine``), built from the validated settings."""

from typing import Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.settings import LoyaltySettings
from loyalty_ops.lib.containers.engine import ContainerSelection, parse_names
from loyalty_ops.lib.containers.health import MEMORY_PERCENT_LIMIT


class ContainerEngine(dg.ConfigurableResource):
    """Which containers the morning checks read, and on which Docker engine."""

    compose_project: Optional[str] = Field(
        default=None,
        description="Compose project whose containers are checked (LOYALTY_COMPOSE_PROJECT), matched by the "
        "com.docker.compose.project label; docker-compose uses the project directory's name by default.",
    )
    containers: Optional[str] = Field(
        default=None,
        description="Container names to check, comma separated (LOYALTY_CONTAINERS), e.g. loyalty-db-prod,loyalty-api-prod.",
    )
    docker_host: Optional[str] = Field(
        default=None, description="Docker API address (DOCKER_HOST); empty uses the engine's default socket."
    )
    memory_limit_percent: float = Field(
        default=MEMORY_PERCENT_LIMIT, description="Memory use above this percentage of the limit fails the check."
    )
    cpu_sample_seconds: float = Field(
        default=1.0, description="Seconds between the two stats samples CPU use is computed from."
    )

    def selection(self) -> ContainerSelection:
        return ContainerSelection(compose_project=self.compose_project or None, names=parse_names(self.containers))


def container_engine(settings: LoyaltySettings) -> ContainerEngine:
    return ContainerEngine(**settings.containers.model_dump(exclude_none=True))

"""Containers domain definitions. ``container_health`` (group reports) and ``container_health_job`` exist
only when a compose project (LOYALTY_COMPOSE_PROJECT) or container list (LOYALTY_CONTAINERS) is
configured; without one there is nothing to check and no asset to show."""

from typing import Optional

import dagster as dg

from loyalty_ops.defs.containers.assets import container_health
from loyalty_ops.defs.containers.resources import container_engine
from loyalty_ops.defs.settings import LoyaltySettings, current_settings
from loyalty_ops.defs.timezone import PLATFORM_TIMEZONE

container_health_job = dg.define_asset_job(
    name="container_health_job",
    selection=dg.AssetSelection.assets(container_health),
    description="The guide's morning container checks: docker-compose ps and docker stats --no-stream.",
    tags={"loyalty_ops/severity": "warning"},
)

container_health_schedule = dg.ScheduleDefinition(
    name="container_health_schedule",
    job=container_health_job,
    cron_schedule="*/15 * * * *",
    execution_timezone=PLATFORM_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Container status, health, restarts, memory and CPU every 15 minutes, with the database health.",
)


def build_defs(settings: Optional[LoyaltySettings] = None) -> dg.Definitions:
    settings = settings or current_settings()
    if not settings.containers.configured:
        return dg.Definitions()
    return dg.Definitions(
        assets=[container_health],
        jobs=[container_health_job],
        schedules=[container_health_schedule],
        resources={"container_engine": container_engine(settings)},
    )


defs = build_defs()

"""The reports domain's own resource: where the application's API and Redis are, read from env vars.

``LOYALTY_API_URL`` (base URL, e.g. http://localhost:8080) and ``LOYALTY_REDIS_URL`` (redis://..., may
carry a password, so it is passed as ``dg.EnvVar``) are optional: unset, application health reports
"not configured" and its checks pass without probing anything.
"""

from typing import Any, Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.settings import LoyaltySettings, secret_ref


class ApplicationEndpoints(dg.ConfigurableResource):
    """The loyalty API and its Redis cache, for application health (both optional)."""

    api_url: Optional[str] = Field(
        default=None, description="Base URL of the API; /health and /ready are appended (LOYALTY_API_URL)."
    )
    redis_url: Optional[str] = Field(
        default=None, description="redis://[:password@]host:6379/0 of the cache (LOYALTY_REDIS_URL, read through EnvVar)."
    )
    timeout_s: float = Field(
        default=5.0, description="Seconds to wait for each endpoint before calling it unreachable (LOYALTY_HEALTH_TIMEOUT_S)."
    )


def application_endpoints(settings: LoyaltySettings) -> ApplicationEndpoints:
    reports = settings.reports
    values: dict[str, Any] = {
        "api_url": reports.api_url,
        "redis_url": secret_ref("LOYALTY_REDIS_URL", reports.redis_url),
        "timeout_s": reports.health_timeout_s,
    }
    return ApplicationEndpoints(**{k: v for k, v in values.items() if v is not None})

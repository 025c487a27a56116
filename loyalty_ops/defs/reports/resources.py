"""The reports domain's own resource: where the application's API and Redis are, read from env vars.

``LOYALTY_API_URL`` (base URL, e.g. http://localhost:8080) and ``LOYALTY_REDIS_URL`` (redis://..., may
carry a password, so it is passed as ``dg.EnvVar``) are optional: unset, application health reports
"not configured" and its checks pass without probing anything.
"""

import os
from typing import Any, Mapping, Optional

import dagster as dg
from pydantic import Field


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


def application_endpoints(environ: Mapping[str, str] = os.environ) -> ApplicationEndpoints:
    values: dict[str, Any] = {}
    if environ.get("LOYALTY_API_URL"):
        values["api_url"] = environ["LOYALTY_API_URL"]
    if environ.get("LOYALTY_REDIS_URL"):
        values["redis_url"] = dg.EnvVar("LOYALTY_REDIS_URL")
    timeout = environ.get("LOYALTY_HEALTH_TIMEOUT_S")
    if timeout:
        try:
            values["timeout_s"] = float(timeout)
        except ValueError:
            raise ValueError(f"LOYALTY_HEALTH_TIMEOUT_S must be a number of seconds, got {timeout!r}; example: 5") from None
    return ApplicationEndpoints(**values)

"""Alerting domain definitions: the paging sensors and the ``alerting`` resource built from the environment."""

import dagster as dg

from loyalty_ops.defs.alerting.environment import alerting_resource
from loyalty_ops.defs.alerting.sensors import ALERTING_SENSORS

defs = dg.Definitions(sensors=ALERTING_SENSORS, resources={"alerting": alerting_resource()})

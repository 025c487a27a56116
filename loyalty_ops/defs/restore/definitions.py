"""Restore domain definitions: ``restore_job`` (launched from the UI) and the ``restore_drill`` asset with
its check, which ``nightly_backup_job`` runs after each backup."""

import dagster as dg

from loyalty_ops.defs.restore.drill import restore_drill, restore_drill_matches_source
from loyalty_ops.defs.restore.jobs import restore_job
from loyalty_ops.defs.restore.resources import restore_settings
from loyalty_ops.defs.settings import current_settings

defs = dg.Definitions(
    assets=[restore_drill],
    asset_checks=[restore_drill_matches_source],
    jobs=[restore_job],
    resources={"restore_settings": restore_settings(current_settings())},
)

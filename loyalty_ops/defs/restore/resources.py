"""The restore domain's own settings (resource key ``restore_settings``), built from the validated settings."""

from typing import Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.settings import LoyaltySettings
from loyalty_ops.lib.restore.plan import DRILL_EVERY_ENV, RestoreConfigError, parse_drill_every


class RestoreSettings(dg.ConfigurableResource):
    """How often the restore drill runs, how parallel it is, and where restores put temporary files."""

    drill_every_n_backups: str = Field(
        default="1",
        description=f"Drill every Nth backup ({DRILL_EVERY_ENV}): 1 = every backup (default), 7 = every seventh, 0 = never.",
    )
    drill_jobs: int = Field(default=2, description="pg_restore -j for the drill (LOYALTY_DRILL_JOBS).")
    work_dir: Optional[str] = Field(
        default=None,
        description="Directory for downloads and the decompressed archive (LOYALTY_RESTORE_WORK_DIR); default: "
        "the backup directory. Needs room for the uncompressed archive.",
    )

    def every_n(self) -> int:
        try:
            return parse_drill_every(self.drill_every_n_backups)
        except RestoreConfigError as exc:
            raise dg.Failure(str(exc)) from None


def restore_settings(settings: LoyaltySettings) -> RestoreSettings:
    return RestoreSettings(**settings.restore.model_dump(exclude_none=True))

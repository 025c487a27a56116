"""The restore domain's own settings (resource key ``restore_settings``), read from the environment once."""

import os
from typing import Mapping, Optional

import dagster as dg
from pydantic import Field

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
            return parse_drill_every({DRILL_EVERY_ENV: self.drill_every_n_backups})
        except RestoreConfigError as exc:
            raise dg.Failure(str(exc)) from None


def restore_settings(environ: Mapping[str, str] = os.environ) -> RestoreSettings:
    values = {
        "drill_every_n_backups": environ.get(DRILL_EVERY_ENV) or None,
        "drill_jobs": int(environ["LOYALTY_DRILL_JOBS"]) if (environ.get("LOYALTY_DRILL_JOBS") or "").isdigit() else None,
        "work_dir": environ.get("LOYALTY_RESTORE_WORK_DIR") or None,
    }
    return RestoreSettings(**{k: v for k, v in values.items() if v is not None})

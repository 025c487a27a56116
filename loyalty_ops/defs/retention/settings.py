"""Retention settings: a resource built from the ``LOYALTY_RETENTION_*`` variables and ``LOYALTY_LOG_DIR``
(read and validated by :mod:`loyalty_ops.defs.settings`).

Unset variables keep the defaults (the guide's 30 days, a floor of 3 verified backups). The launchpad
config of ``retention_plan`` can override any of them for one run.
"""

from typing import Any, Optional

import dagster as dg
from pydantic import Field

from loyalty_ops.defs.settings import LoyaltySettings
from loyalty_ops.lib.retention.plan import RetentionPolicy

class RetentionSettings(dg.ConfigurableResource):
    """How long backups, offsite copies and logs are kept, and the floor that is never deleted."""

    keep_days: float = Field(default=30, description="Keep every backup younger than this many days (LOYALTY_RETENTION_KEEP_DAYS).")
    min_keep: int = Field(
        default=3,
        description="The floor: the newest N verified backups are always kept, whatever their age; at least 1 "
        "(LOYALTY_RETENTION_MIN_KEEP).",
    )
    gfs_daily: int = Field(default=0, description="GFS: also keep the newest verified backup of each of the last N days; 0 = off (LOYALTY_RETENTION_GFS_DAILY).")
    gfs_weekly: int = Field(default=0, description="GFS: ... of each of the last N ISO weeks; 0 = off (LOYALTY_RETENTION_GFS_WEEKLY).")
    gfs_monthly: int = Field(default=0, description="GFS: ... of each of the last N months; 0 = off (LOYALTY_RETENTION_GFS_MONTHLY).")
    log_dir: Optional[str] = Field(default=None, description="Directory whose *.log files are cleaned; unset = logs are not touched (LOYALTY_LOG_DIR).")
    log_keep_days: float = Field(default=30, description="Delete *.log files not written for this many days (LOYALTY_RETENTION_LOG_KEEP_DAYS).")
    multipart_max_age_hours: float = Field(
        default=24, description="Abort incomplete multipart uploads of backups older than this (LOYALTY_RETENTION_MULTIPART_MAX_AGE_HOURS)."
    )
    max_backup_age_hours: float = Field(
        default=48,
        description="Delete nothing (and fail) when the newest backup is older than this; 0 disables "
        "(LOYALTY_RETENTION_MAX_BACKUP_AGE_HOURS).",
    )
    drill_required_for_newest: bool = Field(
        default=True,
        description="Once restore drills exist, the newest backup must have passed one; false = the most recent "
        "drill must have passed (for drills every N backups) (LOYALTY_RETENTION_DRILL_REQUIRED_FOR_NEWEST).",
    )
    history_limit: int = Field(
        default=400, description="How many backup/drill/offsite records to read from the instance (LOYALTY_RETENTION_HISTORY_LIMIT)."
    )
    dry_run: bool = Field(default=False, description="Default of retention_cleanup's dry_run (LOYALTY_RETENTION_DRY_RUN).")

    def policy(self, **overrides: Any) -> RetentionPolicy:
        values = {
            "keep_days": self.keep_days,
            "min_keep": self.min_keep,
            "gfs_daily": self.gfs_daily,
            "gfs_weekly": self.gfs_weekly,
            "gfs_monthly": self.gfs_monthly,
            "log_keep_days": self.log_keep_days,
            "multipart_max_age_hours": self.multipart_max_age_hours,
            "max_backup_age_hours": self.max_backup_age_hours,
            "drill_required_for_newest": self.drill_required_for_newest,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return RetentionPolicy(**values)


def retention_settings(settings: LoyaltySettings) -> RetentionSettings:
    """The resource from the validated settings; unset variables keep the defaults above."""
    values = settings.retention.model_dump(exclude_none=True)
    return RetentionSettings(**values)

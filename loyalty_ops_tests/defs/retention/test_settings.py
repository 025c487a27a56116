"""Retention settings from the environment."""

import pytest

from loyalty_ops.defs.retention.settings import retention_settings
from loyalty_ops.defs.settings import SettingsError, load_settings


def test_settings_from_environment():
    settings = retention_settings(load_settings(
        {
            "LOYALTY_RETENTION_KEEP_DAYS": "14",
            "LOYALTY_RETENTION_MIN_KEEP": "5",
            "LOYALTY_RETENTION_GFS_MONTHLY": "12",
            "LOYALTY_RETENTION_DRY_RUN": "yes",
            "LOYALTY_LOG_DIR": "/var/log/loyalty",
        }
    ))
    policy = settings.policy(gfs_daily=7, keep_days=None)
    assert (policy.keep_days, policy.min_keep, policy.gfs_daily, policy.gfs_monthly) == (14, 5, 7, 12)
    assert settings.dry_run is True and settings.log_dir == "/var/log/loyalty"


def test_defaults_and_malformed_values_are_refused_before_loading():
    defaults = retention_settings(load_settings({}))
    assert defaults.policy().keep_days == 30 and defaults.min_keep == 3
    with pytest.raises(SettingsError) as refused:
        load_settings({"LOYALTY_RETENTION_MIN_KEEP": "three", "LOYALTY_RETENTION_DRY_RUN": "maybe"})
    assert "LOYALTY_RETENTION_MIN_KEEP must be a whole number, got 'three'" in str(refused.value)
    assert "LOYALTY_RETENTION_DRY_RUN must be true or false, got 'maybe'" in str(refused.value)

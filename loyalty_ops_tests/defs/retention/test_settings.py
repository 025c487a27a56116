"""Retention settings from the environment."""

from loyalty_ops.defs.retention.settings import retention_settings


def test_settings_from_environment():
    settings = retention_settings(
        {
            "LOYALTY_RETENTION_KEEP_DAYS": "14",
            "LOYALTY_RETENTION_MIN_KEEP": "5",
            "LOYALTY_RETENTION_GFS_MONTHLY": "12",
            "LOYALTY_RETENTION_DRY_RUN": "yes",
            "LOYALTY_LOG_DIR": "/var/log/loyalty",
        }
    )
    policy = settings.policy(gfs_daily=7, keep_days=None)
    assert (policy.keep_days, policy.min_keep, policy.gfs_daily, policy.gfs_monthly) == (14, 5, 7, 12)
    assert settings.dry_run is True and settings.log_dir == "/var/log/loyalty" and settings.invalid_env is None


def test_defaults_and_malformed_values_do_not_break_loading():
    assert retention_settings({}).policy().keep_days == 30 and retention_settings({}).min_keep == 3
    settings = retention_settings({"LOYALTY_RETENTION_MIN_KEEP": "three", "LOYALTY_RETENTION_DRY_RUN": "maybe"})
    assert "LOYALTY_RETENTION_MIN_KEEP='three'" in settings.invalid_env
    assert "LOYALTY_RETENTION_DRY_RUN" in settings.invalid_env

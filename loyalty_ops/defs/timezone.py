"""The platform's timezone: every schedule runs in it (cron times in the guide are Harare local time)."""

PLATFORM_TIMEZONE = "Africa/Harare"

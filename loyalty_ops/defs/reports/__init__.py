"""Reports: bloat, sizes, database and application health every 15 minutes, and the morning report."""

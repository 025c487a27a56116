"""Reports: bloat estimation, sizes, database and application health, thresholds and markdown (no Dagster)."""

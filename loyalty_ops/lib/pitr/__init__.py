"""Point-in-time recovery on barman-cloud: where the WAL archive and base backups live, the engine's
commands, the archive's health, recovery targets, scratch instances, the PITR drill and retention.

The engine (barman-cloud) moves the bytes; this package builds its argument lists, reads what it
reports, and judges the result. No Dagster here, and no environment reads: values come in as arguments.
"""

"""How runs that work on the same database are kept apart, and how a run says how bad its failure is.

- ``DATABASE_LOCK_TAG``: backup, restore, maintenance and retention jobs carry it with the database's
  name as value; dagster.yaml allows one such run per value at a time.
- ``DATABASE_POOL``: the pool of the ops that load the database (dump, restore, drill, maintenance), so
  ad-hoc materializations from the asset graph (which carry no job tags) are kept apart too.
- ``SEVERITY_TAG``: ``critical`` (backup, restore) or ``warning``; the paging sensors read it.
"""

DATABASE_LOCK_TAG = "loyalty_ops/database_lock"
DATABASE_POOL = "loyalty_db"
SEVERITY_TAG = "loyalty_ops/severity"


def job_tags(database: str, severity: str, *, database_lock: bool = True) -> dict[str, str]:
    """The run tags of a job that works on ``database``."""
    if severity not in ("critical", "error", "warning", "info"):
        raise ValueError(f"severity must be critical, error, warning or info, got {severity!r}")
    tags = {SEVERITY_TAG: severity}
    if database_lock:
        tags[DATABASE_LOCK_TAG] = database
    return tags

"""``restore_job`` in ``mode: new_server``: the run log and metadata of a disaster-recovery restore onto an
empty server (roles first, then the database with its owner, grants and settings)."""

from datetime import datetime

import dagster as dg

from loyalty_ops.defs.restore.common import restored_backup_summary
from loyalty_ops.lib.formatting import human_bytes, markdown_code, markdown_table
from loyalty_ops.lib.restore.environment import RestoreEnvironment
from loyalty_ops.lib.restore.new_server import restore_onto_new_server
from loyalty_ops.lib.restore.plan import RestoreRequest


def new_server_restore(context, request: RestoreRequest, env: RestoreEnvironment, now: datetime) -> dict:
    """Run the restore and record what on-call asks first: which backup, which roles were created and which
    were already there, whether passwords came with them, the measured RTO and each step's time."""
    outcome = restore_onto_new_server(request, env, now=now)
    roles = outcome.roles
    summary = {
        "target_database": outcome.target_database,
        **restored_backup_summary(outcome, mode="new_server", jobs=request.jobs),
        "globals_filename": outcome.globals_filename,
        "role_passwords": outcome.role_passwords,
        "roles_created": len(roles.created_roles),
        "roles_left_as_they_were": len(roles.existing_roles),
        "database_owner": outcome.owner,
        "database_properties_applied": outcome.properties_applied,
        "rows_verified": outcome.comparison.rows_compared,
        "database_locale": outcome.database_locale,
    }
    rows = [(markdown_code(name), "created") for name in roles.created_roles]
    rows += [(markdown_code(name), "already on this server: left as it was") for name in roles.existing_roles]
    metadata: dict = dict(summary)
    metadata["roles"] = dg.MetadataValue.md(markdown_table(["role", "what happened"], rows, "ll"))
    metadata["timings"] = dg.MetadataValue.json({k: round(v, 3) for k, v in outcome.timings.items()})
    metadata["warnings"] = dg.MetadataValue.json(outcome.warnings)
    metadata["how_chosen"] = dg.MetadataValue.md("\n".join(f"- {note}" for note in outcome.notes) or "- named in the config")
    metadata["verification"] = outcome.comparison.summary()
    context.add_output_metadata(metadata)
    context.log.info(
        f"restored {outcome.backup_filename} onto this server as {outcome.target_database} "
        f"({human_bytes(outcome.restored_bytes)}, owner {outcome.owner or '(restoring role)'}) in {outcome.rto_s:.1f} s; "
        f"{roles.summary()}"
    )
    return summary

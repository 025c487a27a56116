"""The restore drill on the real cluster: after the nightly backup, and on broken archives."""

from __future__ import annotations

import gzip
import hashlib
import json

from loyalty_ops.definitions import defs
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.lib.restore.plan import DRILL_PREFIX
from loyalty_ops_tests.defs.restore.conftest import databases, materialize_drill
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata

CHECK = "restore_drill_matches_source"


def drill_databases(cluster) -> set[str]:
    return {d for d in databases(cluster) if d.startswith(DRILL_PREFIX)}


def test_nightly_job_drills_the_new_backup(restore_resources, dagster_instance, pg_cluster):
    pg_cluster.create_database("loyalty_drill_20200101_000000")  # left by a killed drill long ago
    job = defs.resolve_job_def("nightly_backup_job")
    result = job.execute_in_process(resources=restore_resources, instance=dagster_instance, raise_on_error=False)
    assert result.success
    backup = materialization_metadata(result, "database_backup")
    drill = materialization_metadata(result, "restore_drill")
    assert drill["passed"] is True
    assert drill["backup_filename"] == backup["filename"]
    assert isinstance(drill["rto_s"], float) and drill["rto_s"] > 0
    assert isinstance(drill["restored_bytes"], int) and drill["restored_bytes"] > 1_000_000
    assert drill["tables_compared"] == backup["table_count"] and drill["rows_compared"] == backup["total_rows"]
    assert drill["scratch_database"].startswith(DRILL_PREFIX) and drill["scratch_dropped"] is True
    assert check_evaluations(result)[CHECK] is True
    assert drill_databases(pg_cluster) == set()


def _rewrite_sidecars(path, manifest_changes=None):
    """Record the file's current hash, as a writer that wrote it this way would have."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (path.parent / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
    manifest_file = path.parent / (path.name + ".manifest.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["sha256"] = digest
    for key, value in (manifest_changes or {}).items():
        manifest[key] = value
    manifest_file.write_text(json.dumps(manifest))


def _drill_failed(result, step_text):
    assert not result.success  # a failed drill fails the run, so it pages
    meta = materialization_metadata(result, "restore_drill")
    assert meta["passed"] is False and meta["scratch_dropped"] is True
    evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK]
    assert len(evaluations) == 1 and evaluations[0].passed is False
    assert step_text in evaluations[0].description, evaluations[0].description
    return meta, evaluations[0].description


def test_truncated_gzip_fails_the_drill_naming_the_step(restore_resources, dagster_instance, pg_cluster, local_backup):
    data = local_backup.read_bytes()
    local_backup.write_bytes(data[: len(data) * 2 // 3])
    _rewrite_sidecars(local_backup)
    result = materialize_drill(restore_resources, dagster_instance)
    meta, message = _drill_failed(result, "step 'decompress'")
    assert "truncated" in message and meta["failed_step"] == "decompress"
    assert drill_databases(pg_cluster) == set()


def test_pg_restore_failure_still_drops_the_scratch_database(restore_resources, dagster_instance, pg_cluster, local_backup):
    # A valid gzip of a truncated archive: decompression passes, pg_restore fails after the database exists.
    raw = gzip.decompress(local_backup.read_bytes())
    local_backup.write_bytes(gzip.compress(raw[: len(raw) * 2 // 3], compresslevel=1))
    _rewrite_sidecars(local_backup)
    result = materialize_drill(restore_resources, dagster_instance)
    meta, message = _drill_failed(result, "step 'pg_restore'")
    assert meta["failed_step"] == "pg_restore"
    assert drill_databases(pg_cluster) == set()


def test_row_count_mismatch_names_the_table(restore_resources, dagster_instance, pg_cluster, local_backup):
    manifest = json.loads((local_backup.parent / (local_backup.name + ".manifest.json")).read_text())
    counts = dict(manifest["row_counts"], **{"public.redemptions": manifest["row_counts"]["public.redemptions"] + 1})
    catalog = dict(manifest["catalog_counts"], indexes=manifest["catalog_counts"]["indexes"] + 1)
    _rewrite_sidecars(local_backup, {"row_counts": counts, "catalog_counts": catalog})
    result = materialize_drill(restore_resources, dagster_instance)
    meta, message = _drill_failed(result, "step 'compare with manifest'")
    assert "table public.redemptions" in message and "(-1)" in message and "catalog indexes" in message
    assert meta["restored_bytes"] > 0 and meta["rto_s"] > 0
    assert drill_databases(pg_cluster) == set()


def test_drill_frequency_is_configurable(restore_resources, dagster_instance, pg_cluster, local_backup):
    resources = {**restore_resources, "restore_settings": RestoreSettings(drill_every_n_backups="0")}
    result = materialize_drill(resources, dagster_instance)
    assert result.success
    assert not [m for m in result.get_asset_materialization_events()]
    assert check_evaluations(result) == {}
    forced = materialize_drill(resources, dagster_instance, force=True)
    assert forced.success and materialization_metadata(forced, "restore_drill")["passed"] is True
    bad = materialize_drill({**restore_resources, "restore_settings": RestoreSettings(drill_every_n_backups="weekly")}, dagster_instance)
    assert not bad.success

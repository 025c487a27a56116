"""Verified means restorable: a dump cut short is never called good, and a legitimate shrink has a way out.

The cut dump comes from a real ``pg_dump`` whose output is cut by ``head -c`` while the wrapper exits 0,
as a broken pipe or a killed container can do; it is found through the target's ``pg_bin_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.lib.pg.tools import find_bin_dir
from loyalty_ops_tests.conftest import postgres_target
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata

ALL = [database_backup, offsite_backup_copy, *BACKUP_CHECKS]


def cutting_bin_dir(tmp_path: Path, keep_bytes: int) -> str:
    """A bin dir whose pg_dump passes only the first ``keep_bytes`` of the real archive on, then exits 0."""
    real = find_bin_dir()
    bin_dir = tmp_path / "cut-bin"
    bin_dir.mkdir()
    for tool in ("pg_restore", "psql", "pg_dumpall"):
        if (Path(real) / tool).exists():
            os.symlink(Path(real) / tool, bin_dir / tool)
    script = bin_dir / "pg_dump"
    script.write_text(
        "#!/bin/bash\n"
        f'if [ "$1" = "--version" ]; then exec {real}/pg_dump --version; fi\n'
        f'{real}/pg_dump "$@" | head -c {keep_bytes}\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return str(bin_dir)


def objects(s3_client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("fraction", [0.7, 0.999])
def test_a_dump_cut_short_is_never_uploaded_as_verified(
    ops_resources, dagster_instance, s3_client, s3_bucket, tmp_path, pg_cluster, loyalty_db, fraction
):
    good = dg.materialize(ALL, resources=ops_resources, instance=dagster_instance)
    assert good.success
    raw_bytes = materialization_metadata(good, "database_backup")["raw_bytes"]
    uploaded_before = set(objects(s3_client, s3_bucket))

    cut = int(raw_bytes * fraction)
    resources = {
        **ops_resources,
        "postgres": postgres_target(pg_cluster, loyalty_db, pg_bin_dir=cutting_bin_dir(tmp_path, cut)),
    }
    result = dg.materialize(ALL, resources=resources, instance=dagster_instance, raise_on_error=False)

    assert not result.success
    evaluations = check_evaluations(result)
    assert evaluations["backup_archive_complete"] is False
    # The proxies of completeness all pass on such a file: the gzip layer is whole, the TOC lists every table.
    assert evaluations["backup_archive_decompresses"] is True
    assert evaluations["backup_toc_lists_all_tables"] is True
    failed = [e for e in result.get_asset_check_evaluations() if e.check_name == "backup_archive_complete"][0]
    assert "end marker is missing" in failed.description or "data blocks" in failed.description
    assert str(cut) in failed.description
    assert not [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("offsite_backup_copy")]
    assert set(objects(s3_client, s3_bucket)) == uploaded_before
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_a_complete_backup_reports_its_blocks_and_verification_time(ops_resources, dagster_instance):
    result = dg.materialize(ALL, resources=ops_resources, instance=dagster_instance)
    check = [e for e in result.get_asset_check_evaluations() if e.check_name == "backup_archive_complete"][0]
    assert check.passed
    meta = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
    assert meta["data_blocks"] >= 5 and isinstance(meta["data_blocks"], int)
    assert meta["archive_bytes"] == materialization_metadata(result, "database_backup")["raw_bytes"]
    assert isinstance(meta["verify_seconds"], float)
    assert meta["read_back"] is True and "read back from the file on disk as it was written" in check.description


def test_the_read_back_verdicts_stand_only_for_the_very_bytes_read_back(ops_resources, dagster_instance):
    """The checks hash the file on disk again; once it differs from what was read back while it was written,
    they read the whole file themselves (and here find its damage)."""
    only = dg.AssetSelection.assets(database_backup).without_checks()
    backup = dg.materialize(ALL, selection=only, resources=ops_resources, instance=dagster_instance)
    path = Path(materialization_metadata(backup, "database_backup")["path"])
    data = path.read_bytes()
    path.write_bytes(data[:-8] + bytes([data[-8] ^ 0x01]) + data[-7:])  # the gzip trailer's CRC-32: same size
    checks = dg.materialize(ALL, selection=dg.AssetSelection.checks_for_assets(database_backup),
                            resources=ops_resources, instance=dagster_instance, raise_on_error=False)
    evaluations = {e.check_name: e for e in checks.get_asset_check_evaluations()}
    assert evaluations["backup_checksum_matches"].passed is False
    assert evaluations["backup_archive_decompresses"].passed is False
    assert "read_back" not in evaluations["backup_archive_decompresses"].metadata


def test_a_legitimate_shrink_is_accepted_once_by_launchpad_field(
    pg_cluster, make_database, dagster_instance, ops_resources, s3_client, s3_bucket
):
    db = make_database("purge", sample_scale=0.1)
    resources = {**ops_resources, "postgres": postgres_target(pg_cluster, db)}
    assert dg.materialize(ALL, resources=resources, instance=dagster_instance).success
    with pg_cluster.connect(db) as conn:
        conn.execute("TRUNCATE events, redemptions")

    refused = dg.materialize(ALL, resources=resources, instance=dagster_instance, raise_on_error=False)
    assert not refused.success
    size_check = [e for e in refused.get_asset_check_evaluations() if e.check_name == "backup_size_plausible"][0]
    assert not size_check.passed
    assert "accept_size_change: true" in size_check.description  # the failure says the way out

    accepted = dg.materialize(
        ALL,
        resources=resources,
        instance=dagster_instance,
        run_config={"ops": {"database_backup": {"config": {"accept_size_change": True}}}},
    )
    assert accepted.success
    meta = materialization_metadata(accepted, "database_backup")
    assert meta["accept_size_change"] is True
    assert check_evaluations(accepted)["backup_size_plausible"] is True
    assert materialization_metadata(accepted, "offsite_backup_copy")["verified"] is True

    # The next ordinary backup compares with the accepted one and passes without the field.
    later = dg.materialize(ALL, resources=resources, instance=dagster_instance)
    assert later.success and materialization_metadata(later, "database_backup")["accept_size_change"] is False

"""Fixtures of the restore tests: one real backup of the sample database (file, sidecar, manifest) per
session, copied into each test's backup directory, and helpers to run the restore job and the drill."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.definitions import defs
from loyalty_ops.defs.restore.drill import restore_drill, restore_drill_matches_source
from loyalty_ops.defs.restore.resources import RestoreSettings
from loyalty_ops.lib.pg.tools import HostToolRunner
from loyalty_ops.lib.restore.run import RestoreEnvironment, take_safety_backup


@pytest.fixture(scope="session")
def source_backup(pg_cluster, loyalty_db, tmp_path_factory) -> Path:
    """A backup of the sample database with its .sha256 sidecar and manifest, taken with the backup code."""
    directory = tmp_path_factory.mktemp("source_backup")
    env = RestoreEnvironment(spec=pg_cluster.spec(loyalty_db), runner=HostToolRunner(pg_cluster.spec(loyalty_db)), location=BackupLocation(directory))
    return take_safety_backup(env, loyalty_db)


def copy_backup(source: Path, directory: Path) -> Path:
    for suffix in ("", ".sha256", ".manifest.json"):
        shutil.copy2(str(source) + suffix, directory / (source.name + suffix))
    return directory / source.name


@pytest.fixture
def local_backup(source_backup, backup_dir) -> Path:
    return copy_backup(source_backup, backup_dir)


@pytest.fixture
def restore_resources(ops_resources) -> dict:
    return {**ops_resources, "restore_settings": RestoreSettings()}


def databases(cluster) -> set[str]:
    with cluster.connect() as conn:
        return {name for (name,) in conn.execute("SELECT datname FROM pg_database")}


def run_restore(resources: dict, instance, **config) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("restore_job")
    run_config = {"ops": {"restore_database": {"config": {"progress_interval_seconds": 1.0, **config}}}}
    return job.execute_in_process(run_config=run_config, resources=resources, instance=instance, raise_on_error=False)


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures, "the run did not fail"
    return failures[0].step_failure_data.error.message


def materialize_drill(resources: dict, instance, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [restore_drill, restore_drill_matches_source],
        resources=resources,
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"restore_drill": {"config": {"progress_interval_seconds": 1.0, **config}}}},
    )


def everything_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*"))

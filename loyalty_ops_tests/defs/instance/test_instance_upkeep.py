"""Dagster's own upkeep: the history cleanup job on a real instance (runs aged in storage, compute logs on
disk) and the run-queue watchdog sensor."""

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.storage.runs.schema import RunsTable

from loyalty_ops.defs.instance.history import HistoryCleanupConfig, dagster_history_cleanup_job
from loyalty_ops.defs.instance.policy import HistoryPolicy, Verdict
from loyalty_ops.defs.instance.queue import DATABASE_LOCK_TAG, describe_queue, run_queue_watchdog

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "age_days, finished, materialized, expected",
    [
        (5, True, False, Verdict.KEEP),
        (31, True, False, Verdict.DELETE_LOGS),
        (91, True, False, Verdict.DELETE_RUN),
        (91, True, True, Verdict.DELETE_LOGS),
        (401, True, True, Verdict.DELETE_RUN),
        (900, False, False, Verdict.KEEP),
    ],
)
def test_policy_verdicts(age_days, finished, materialized, expected):
    created = NOW - timedelta(days=age_days)
    assert HistoryPolicy().verdict(created, NOW, finished=finished, materialized_assets=materialized) is expected


def test_policy_rejects_unsafe_settings():
    assert HistoryPolicy().problems() == []
    assert any("older_than_days" in p for p in HistoryPolicy(run_days=0).problems())
    assert any("keep_asset_runs_days" in p for p in HistoryPolicy(run_days=90, asset_run_days=30).problems())


@dg.op
def noop_op():
    return 1


@dg.job
def noop_job():
    noop_op()


@dg.asset
def probe_asset():
    """Stands for an asset whose history is read back (like database_backup)."""
    return 1


@dg.asset
def report_asset():
    """Stands for a frequent report whose old runs need not be kept."""
    return 1


KEEP = ["probe_asset"]


def _age(instance: dg.DagsterInstance, run_id: str, days: int) -> None:
    created = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=days)
    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(RunsTable.update().where(RunsTable.c.run_id == run_id).values(create_timestamp=created))


def _write_compute_log(instance: dg.DagsterInstance, run_id: str) -> Path:
    path = Path(instance.compute_log_manager.get_captured_local_path([run_id, "compute_logs", "step"], "out"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 1000)
    return path.parent.parent


@pytest.fixture
def aged_history(dagster_instance: dg.DagsterInstance) -> dict:
    instance = dagster_instance
    runs = {}
    for name, days, asset in [
        ("recent", 2, None),
        ("logs_only", 40, None),
        ("old", 120, None),
        ("old_report", 120, report_asset),
        ("old_asset", 120, probe_asset),
        ("ancient_asset", 500, probe_asset),
    ]:
        if asset is not None:
            result = dg.materialize([asset], instance=instance)
        else:
            result = noop_job.execute_in_process(instance=instance)
        runs[name] = result.run_id
        _age(instance, result.run_id, days)
        _write_compute_log(instance, result.run_id)
    orphan = str(uuid.uuid4())
    runs["orphan_logs"] = orphan
    _write_compute_log(instance, orphan)
    return runs


def _log_dir(instance: dg.DagsterInstance, run_id: str) -> Path:
    return Path(instance.compute_log_manager.get_captured_local_path([run_id, "x"], "out")).parent


def _cleanup(instance: dg.DagsterInstance, **config) -> dict:
    result = dagster_history_cleanup_job.execute_in_process(
        instance=instance, run_config=dg.RunConfig(ops={"prune_dagster_history": HistoryCleanupConfig(**config)})
    )
    assert result.success
    return result.output_for_node("prune_dagster_history")


def test_cleanup_dry_run_by_default_deletes_nothing(dagster_instance, aged_history):
    summary = _cleanup(dagster_instance, keep_asset_runs_for=KEEP)
    assert summary["dry_run"] is True
    assert summary["runs_deleted"] == 3  # old, old_report, ancient_asset
    assert summary["runs_kept_for_asset_history"] == 1  # old_asset
    for run_id in aged_history.values():
        assert _log_dir(dagster_instance, run_id).is_dir()
    for name, run_id in aged_history.items():
        if name != "orphan_logs":
            assert dagster_instance.get_run_by_id(run_id) is not None


def test_cleanup_deletes_old_runs_and_logs_and_keeps_asset_history(dagster_instance, aged_history):
    instance = dagster_instance
    summary = _cleanup(instance, dry_run=False, keep_asset_runs_for=KEEP)
    assert summary["runs_deleted"] == 3
    assert instance.get_run_by_id(aged_history["old"]) is None
    assert instance.get_run_by_id(aged_history["old_report"]) is None  # materialized, but not a kept asset
    assert instance.get_run_by_id(aged_history["ancient_asset"]) is None
    # Within keep_asset_runs_days the materializing run stays (backup history), but its logs go.
    assert instance.get_run_by_id(aged_history["old_asset"]) is not None
    assert not _log_dir(instance, aged_history["old_asset"]).exists()
    assert instance.get_run_by_id(aged_history["logs_only"]) is not None
    assert not _log_dir(instance, aged_history["logs_only"]).exists()
    assert not _log_dir(instance, aged_history["orphan_logs"]).exists()
    # Recent history is untouched.
    assert instance.get_run_by_id(aged_history["recent"]) is not None
    assert _log_dir(instance, aged_history["recent"]).is_dir()
    assert summary["compute_log_runs_cleaned"] == 3  # logs_only, old_asset, orphan
    assert summary["compute_log_bytes"] >= 6 * 1000  # our files, plus what the runs captured themselves
    # A second pass finds nothing left to do.
    again = _cleanup(instance, dry_run=False, keep_asset_runs_for=KEEP)
    assert again["runs_deleted"] == 0 and again["compute_log_runs_cleaned"] == 0


def test_default_keeps_the_backup_history_assets():
    from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, OFFSITE_ASSET_KEY
    from loyalty_ops.defs.instance.history import LONG_HISTORY_ASSETS

    assert HistoryCleanupConfig().keep_asset_runs_for == LONG_HISTORY_ASSETS
    for key in (BACKUP_ASSET_KEY, OFFSITE_ASSET_KEY, dg.AssetKey("restore_drill"), dg.AssetKey("weekly_maintenance")):
        assert key.to_user_string() in LONG_HISTORY_ASSETS


def test_cleanup_refuses_unsafe_config_before_touching_anything(dagster_instance, aged_history):
    result = dagster_history_cleanup_job.execute_in_process(
        instance=dagster_instance,
        run_config=dg.RunConfig(
            ops={"prune_dagster_history": HistoryCleanupConfig(dry_run=False, older_than_days=0)}
        ),
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("prune_dagster_history")
    assert "older_than_days must be at least 1" in str(failure.error.message)
    assert dagster_instance.get_run_by_id(aged_history["old"]) is not None


def _add_run(instance, status, lock=None, job_name="nightly_backup_job") -> str:
    """A run record in the given status, with the code location origin a queued run must have."""
    run_id = str(uuid.uuid4())
    tags = {DATABASE_LOCK_TAG: lock} if lock else {}
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("loyalty_ops"), "__repository__")
    instance.add_run(
        dg.DagsterRun(
            job_name=job_name, run_id=run_id, status=status, tags=tags, remote_job_origin=origin.get_job_origin(job_name)
        )
    )
    return run_id


def test_queue_watchdog_names_the_run_holding_the_lock(dagster_instance):
    instance = dagster_instance
    context = dg.build_sensor_context(instance=instance)
    assert "run queue empty" in run_queue_watchdog(context).skip_message
    holder = _add_run(instance, dg.DagsterRunStatus.STARTED, "loyalty", "weekly_maintenance_job")
    waiting = _add_run(instance, dg.DagsterRunStatus.QUEUED, "loyalty")
    message, too_long = describe_queue(instance)
    assert waiting[:8] in message and holder[:8] in message and f"{DATABASE_LOCK_TAG}=loyalty" in message
    assert not too_long
    message, too_long = describe_queue(instance, now=datetime.now(timezone.utc) + timedelta(hours=3))
    assert too_long
    skip = run_queue_watchdog(dg.build_sensor_context(instance=instance)).skip_message
    assert "1 run(s) queued, 1 in progress" in skip

"""End to end on the production-shaped stack (see conftest): a backup launched by clicking through the
launchpad in headless Chromium, then the run queue serialising two backups of the same database.

Both tests share one started stack (module-scoped fixture); together they stay within about 100 s.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from loyalty_ops.defs.backups.definitions import DATABASE_LOCK_TAG
from loyalty_ops_tests.e2e.browser import CHROMIUM_ARGS
from loyalty_ops_tests.e2e.conftest import ARTIFACTS, LOYALTY_DB, ProductionStack

pytestmark = pytest.mark.browser

LOCATION = "loyalty_ops"
JOB = "nightly_backup_job"
CLEANUP_JOB = "dagster_history_cleanup_job"
CLEANUP_POOL = "dagster_history_cleanup"
RUN_URL = re.compile(r"/runs/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}
IN_PROCESS_YAML = "execution:\n  config:\n    in_process: {}\n"


@pytest.fixture(scope="module")
def executor_config() -> dict:
    """Run config choosing the in-process executor, when the job lets the launcher choose.

    With the default multiprocess executor every step starts its own Python process: measured here, the
    same backup run took 62 s instead of 13 s on 2 busy cores, which this test budget cannot carry.
    """
    from loyalty_ops.definitions import defs

    executor = defs.resolve_job_def(JOB).executor_def
    return IN_PROCESS if executor.name == "multi_or_in_process_executor" else {}


def run_row(stack: ProductionStack, run_id: str) -> dict:
    with stack.dagster_db() as conn:
        row = conn.execute(
            "SELECT run_id, status, pipeline_name, start_time, end_time, create_timestamp FROM runs WHERE run_id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None, f"run {run_id} is not in the dagster database's runs table"
    return dict(zip(("run_id", "status", "job", "start_time", "end_time", "created"), row))


def run_failure_message(stack: ProductionStack, run_id: str) -> str:
    """The run's error events, to make a failing test say why."""
    with stack.dagster_db() as conn:
        rows = conn.execute(
            "SELECT event FROM event_logs WHERE run_id = %s AND dagster_event_type IN "
            "('STEP_FAILURE', 'RUN_FAILURE', 'ENGINE_EVENT') ORDER BY id",
            (run_id,),
        ).fetchall()
    return "\n".join(r[0][:1500] for r in rows[-6:])


def test_backup_launched_from_launchpad_is_stored_in_postgres(
    production_stack: ProductionStack, chromium, executor_config: dict
):
    from playwright.sync_api import expect, sync_playwright

    stack = production_stack
    screenshot = ARTIFACTS / "e2e-launchpad-backup-run.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        # On a first visit Dagster asks to join its community, whenever it likes: always answer "Skip".
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda button: button.click())
        try:
            page.goto(f"{stack.url}/locations/{LOCATION}/jobs/{JOB}/playground", wait_until="domcontentloaded")
            launch = page.get_by_role("button", name="Launch Run")
            expect(launch).to_be_enabled(timeout=30_000)
            # The launchpad shows the defaults the nightly schedule uses; the engineer keeps them.
            editor = page.locator(".CodeMirror").first
            expect(editor).to_contain_text("progress_interval_seconds")
            if executor_config:
                # ...and picks the in-process executor in the editor (see executor_config).
                page.evaluate(
                    "yaml => { const cm = document.querySelector('.CodeMirror').CodeMirror;"
                    " cm.setValue(cm.getValue().replace(/\\s*$/, '\\n') + yaml); }",
                    IN_PROCESS_YAML,
                )
                expect(editor).to_contain_text("in_process")
                expect(page.get_by_text("No errors")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "e2e-launchpad.png"))
            launch.click()
            page.wait_for_url(RUN_URL, timeout=30_000)
            run_id = RUN_URL.search(page.url).group(1)
            status = stack.services.wait_for_run(run_id, timeout_s=90)
            assert status == "SUCCESS", f"run {run_id} ended {status}:\n{run_failure_message(stack, run_id)}"
            # The run page itself shows the outcome.
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=20_000)
        finally:
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    assert screenshot.stat().st_size > 10_000

    # The run, its asset materialization and the daemon's work are in PostgreSQL, not in local files.
    row = run_row(stack, run_id)
    assert row["status"] == "SUCCESS" and row["job"] == JOB
    with stack.dagster_db() as conn:
        materializations = conn.execute(
            "SELECT asset_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            (run_id,),
        ).fetchall()
        keys = {key for (key,) in materializations}
        assert '["database_backup"]' in keys and '["offsite_backup_copy"]' in keys, keys
        asset_row = conn.execute(
            "SELECT last_materialization FROM asset_keys WHERE asset_key = %s", ('["database_backup"]',)
        ).fetchone()
        assert asset_row is not None and run_id in asset_row[0]
        run_tags = dict(conn.execute("SELECT key, value FROM run_tags WHERE run_id = %s", (run_id,)).fetchall())
        assert run_tags[DATABASE_LOCK_TAG] == LOYALTY_DB
    # The backup really exists, locally and offsite.
    files = list(stack.backup_dir.glob("loyalty_*.dump.gz"))
    assert files, f"no backup file in {stack.backup_dir}"
    listed = stack.s3.client().list_objects_v2(Bucket=stack.bucket).get("Contents", [])
    assert any(obj["Key"].endswith(files[0].name) for obj in listed)

    # The daemon evaluated a sensor (run_queue_watchdog ticks every minute, first on daemon start).
    deadline = time.monotonic() + 30
    ticks = []
    while time.monotonic() < deadline:
        with stack.dagster_db() as conn:
            ticks = conn.execute(
                "SELECT status FROM job_ticks WHERE type = 'SENSOR' AND tick_body LIKE %s",
                ('%"run_queue_watchdog"%',),
            ).fetchall()
        if any(status in ("SKIPPED", "SUCCESS") for (status,) in ticks):
            break
        time.sleep(1)
    assert any(status in ("SKIPPED", "SUCCESS") for (status,) in ticks), f"no completed sensor tick: {ticks}"


def _watch_until_finished(stack: ProductionStack, run_ids: list[str], timeout_s: float = 120) -> set[tuple]:
    """Poll the runs table until every run has finished (successfully); returns every distinct snapshot
    of their statuses (tuples in the order of ``run_ids``), so overlaps and waits can be asserted."""
    snapshots: set[tuple] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with stack.dagster_db() as conn:
            statuses = dict(conn.execute("SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", (run_ids,)).fetchall())
        snapshots.add(tuple(statuses.get(run_id) for run_id in run_ids))
        if all(statuses.get(run_id) in FINISHED for run_id in run_ids):
            break
        time.sleep(0.5)
    for run_id in run_ids:
        status = run_row(stack, run_id)["status"]
        assert status == "SUCCESS", f"run {run_id} ended {status}:\n{run_failure_message(stack, run_id)}"
    return snapshots


def _assert_one_after_the_other(stack: ProductionStack, first: str, second: str) -> None:
    # The run records prove it: whichever started second started after the other had ended...
    a, b = sorted((run_row(stack, run_id) for run_id in (first, second)), key=lambda r: r["start_time"])
    assert a["end_time"] <= b["start_time"], (a, b)
    # ...and it was held in the queue meanwhile: enqueued before the first ended, launched by the queue
    # daemon (RUN_STARTING, stored as PIPELINE_STARTING) only after.
    with stack.dagster_db() as conn:
        events = dict(
            conn.execute(
                "SELECT dagster_event_type, extract(epoch FROM timestamp)::float FROM event_logs WHERE run_id = %s "
                "AND dagster_event_type IN ('PIPELINE_ENQUEUED', 'PIPELINE_STARTING')",
                (b["run_id"],),
            ).fetchall()
        )
    assert events["PIPELINE_ENQUEUED"] < a["end_time"] <= events["PIPELINE_STARTING"], (events, a)


def test_queue_runs_two_backups_of_one_database_one_after_the_other(
    production_stack: ProductionStack, executor_config: dict
):
    """Two backups of one database, submitted together, run one after the other (tag limit on
    loyalty_ops/database_lock). Submitted at the same moment, two runs of the history cleanup, whose op
    declares a pool, are serialised by the pool limit (concurrency.pools in dagster.yaml)."""
    stack = production_stack
    # The deploy step of docs/deploy.md: pools get their limits explicitly (a pool's default limit is only
    # applied once the queue has seen it, so two runs queued before that would both start).
    stack.services.set_pool_limit(CLEANUP_POOL, 1)
    client = stack.services.graphql_client()
    # Only the dump itself (the job's tags, hence its database lock, still apply): the checks, offsite
    # copy and restore drill add minutes on a big database but prove nothing more about the queue.
    backups = [
        client.submit_job_execution(
            JOB, repository_location_name=LOCATION, run_config=executor_config, asset_selection=["database_backup"]
        )
        for _ in range(2)
    ]
    # Dry runs (the launchpad default): they delete nothing.
    cleanups = [client.submit_job_execution(CLEANUP_JOB, repository_location_name=LOCATION) for _ in range(2)]

    snapshots = _watch_until_finished(stack, backups + cleanups)
    running = {"STARTING", "STARTED"}
    for name, (i, j) in (("backups", (0, 1)), ("cleanups", (2, 3))):
        assert any(
            {snap[i], snap[j]} & running and "QUEUED" in (snap[i], snap[j]) for snap in snapshots
        ), f"never saw one of the {name} running while the other waited in the queue: {snapshots}"

    with stack.dagster_db() as conn:
        locks = conn.execute(
            "SELECT value FROM run_tags WHERE key = %s AND run_id = ANY(%s)", (DATABASE_LOCK_TAG, backups)
        ).fetchall()
    assert locks == [(LOYALTY_DB,), (LOYALTY_DB,)]
    _assert_one_after_the_other(stack, *backups)
    _assert_one_after_the_other(stack, *cleanups)


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below ``pid``."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append((int(entry.name), cmdline))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def test_a_run_whose_worker_dies_is_marked_failed(production_stack: ProductionStack, executor_config: dict):
    """A run worker killed (OOM killer, kill -9) does not leave the run "running" or "starting": it ends
    FAILURE, with the signal named in its log, so the run-failure sensor pages and the lock is released."""
    stack = production_stack
    client = stack.services.graphql_client()
    code_server = stack.services.code_server_pid
    assert code_server is not None

    def workers() -> set[int]:
        return {pid for pid, cmd in _descendants(code_server) if "spawn_main" in cmd}

    earlier = workers()  # workers of earlier runs may still be exiting
    run_id = client.submit_job_execution(
        JOB, repository_location_name=LOCATION, run_config=executor_config, asset_selection=["database_backup"]
    )
    deadline = time.monotonic() + 60
    worker = None
    while worker is None and time.monotonic() < deadline:
        # Nothing else is launched now: a new multiprocessing child of the code server is this run's worker.
        new = workers() - earlier
        worker = min(new) if new else None
        time.sleep(0.1)
    assert worker is not None, "the run worker never appeared"
    os.kill(worker, signal.SIGKILL)
    status = stack.services.wait_for_run(run_id, timeout_s=60)
    assert status == "FAILURE"
    with stack.dagster_db() as conn:
        # Killed while starting, the launch fails ("exit code -9"); killed later, the code server reports
        # its child's death ("terminated by signal 9"). Either way the run is failed and says why.
        explained = conn.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND (event LIKE %s OR event LIKE %s)",
            (run_id, "%terminated by signal 9%", "%terminated unexpectedly with exit code -9%"),
        ).fetchone()[0]
    assert explained, f"no event explains the failure:\n{run_failure_message(stack, run_id)}"


def test_repository_dagster_yaml_settings_take_effect(production_stack: ProductionStack, monkeypatch):
    """Every setting of the repository's dagster.yaml, as Dagster 1.13 reads it (a misspelt or misplaced
    key would fail to load or silently fall back to a default)."""
    import dagster as dg
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.instance.config import PoolGranularity
    from dagster._core.scheduler.instigation import TickStatus
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    for key, value in production_stack.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    with dg.DagsterInstance.from_config(str(production_stack.dagster_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 8
        assert queue.tag_concurrency_limits == [
            {"key": DATABASE_LOCK_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1 and pools.pool_granularity is PoolGranularity.RUN
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_max_runtime_seconds == 6 * 3600
        assert instance.get_tick_retention_settings(InstigatorType.SCHEDULE)[TickStatus.SUCCESS] == 90
        sensor_ticks = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        assert sensor_ticks[TickStatus.SKIPPED] == 7 and sensor_ticks[TickStatus.SUCCESS] == 90
        assert Path(instance.compute_log_manager.get_captured_local_path(["r", "k"], "out")).is_relative_to(
            production_stack.dagster_home / "storage"
        )

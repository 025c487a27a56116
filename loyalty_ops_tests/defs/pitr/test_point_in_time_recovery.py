"""Point-in-time recovery, as the runbook reads: the server archives every WAL segment to S3 through
barman-cloud, a weekly base backup is taken and checked, and the cluster can be recovered to any second
since, into a new instance on a new port, never over the live one. One archiving cluster for the module."""

from __future__ import annotations

import gzip
import io
import math
import shutil
import socket
import subprocess
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import psycopg
import pytest
import zstandard

from loyalty_ops.defs.alerting.resources import AlertingResource
from loyalty_ops.defs.alerting.sensors import page_on_failed_checks
from loyalty_ops.defs.pitr.drill import pitr_drill, pitr_drill_recovered_to_the_mark
from loyalty_ops.defs.pitr.health import wal_archive_health, wal_archive_settings
from devstack.postgres_cluster import server_engine_dir
from loyalty_ops.lib.pitr.archive import segment_in_bucket
from loyalty_ops.lib.pitr.drill import wait_in_bucket
from loyalty_ops.lib.pitr.engine import archive_argv, restore_command
from loyalty_ops.lib.pitr.instance import ScratchInstance, default_os_user, free_port
from loyalty_ops.lib.pitr.options import LEGACY_ARCHIVE
from loyalty_ops.lib.pitr.recover import WalPrefetch, recover
from loyalty_ops.lib.pitr.target import RecoveryTarget
from loyalty_ops_tests.defs.pitr.conftest import pitr_test_resource, scratch_dir
from loyalty_ops_tests.helpers import check_evaluations, materialization_metadata
from loyalty_ops_tests.lib.alerting.fixtures import webhook_server  # noqa: F401

HARARE = ZoneInfo("Africa/Harare")


def run_restore(pitr_resources, instance, **config):
    from loyalty_ops.definitions import defs

    return defs.resolve_job_def("pitr_restore_job").execute_in_process(
        resources=pitr_resources, instance=instance, raise_on_error=False,
        run_config={"ops": {"pitr_restore": {"config": config}}})


def op_metadata(result) -> dict:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: getattr(v, "value", v) for k, v in event.event_specific_data.metadata.items()}


def failure_message(result) -> str:
    return "\n".join(str(e.event_specific_data.error.message) for e in result.all_events if e.event_type_value == "STEP_FAILURE")


def compressed_like(key: str, data: bytes) -> bytes:
    """``data`` compressed as the engine would store it under ``key`` (by its suffix)."""
    return zstandard.ZstdCompressor(level=1).compress(data) if key.endswith(".zst") else gzip.compress(data)


def archive_as_before_the_change(client, location, access, segment: str, work) -> str:
    """Puts ``segment`` back into the bucket as the archive_command of before archived it (gzip level 6, ``.gz``),
    through the engine itself: a bucket whose older WAL was written before the compression changed."""
    stored = segment_in_bucket(client, location, segment)
    body = client.get_object(Bucket=location.bucket, Key=stored.key)["Body"].read()
    assert stored.key.endswith(".zst"), stored.key  # archived with the default compression
    raw = work / segment
    raw.write_bytes(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read())
    assert raw.stat().st_size == 16 * 1024 * 1024
    client.delete_object(Bucket=location.bucket, Key=stored.key)
    subprocess.run(archive_argv(server_engine_dir(), location, access, LEGACY_ARCHIVE, str(raw)), env=access.env(),
                   check=True, capture_output=True, timeout=60)
    return segment_in_bucket(client, location, segment).key


def test_the_weekly_base_backup_is_listed_complete_with_its_wal_in_the_bucket(base_backup_run, pitr_location, s3_server):
    assert base_backup_run.success, failure_message(base_backup_run)
    meta = materialization_metadata(base_backup_run, "base_backup")
    assert meta["status"] == "DONE" and meta["backup_id"] and meta["begin_lsn"] and meta["end_lsn"]
    assert meta["begin_wal"] <= meta["end_wal"] and meta["cluster_bytes"] > 1_000_000 and meta["bytes_in_bucket"] > 1_000_000
    assert check_evaluations(base_backup_run) == {"base_backup_complete": True, "base_backup_wal_present": True}
    client = s3_server.client()
    assert client.head_object(Bucket=pitr_location.bucket, Key=f"{pitr_location.base_prefix}{meta['backup_id']}/backup.info")
    for segment in (meta["begin_wal"], meta["end_wal"]):
        assert segment_in_bucket(client, pitr_location, segment).key.endswith(".zst"), segment  # the default compression
    assert meta["compression"] == "lz4" and meta["upload_jobs"] == 1
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=pitr_location.bucket,
                                                      Prefix=f"{pitr_location.base_prefix}{meta['backup_id']}/")["Contents"]]
    assert any(k.endswith("/data.tar.lz4") for k in keys), keys
    retention = materialization_metadata(base_backup_run, "pitr_retention")
    assert retention["base_backups"] == 1 and retention["to_delete"] == 0 and retention["blocked"] is False


def test_the_generated_server_settings_are_what_the_live_server_runs(pitr_resources, pitr_instance):
    result = dg.materialize([wal_archive_settings], resources=pitr_resources, instance=pitr_instance)
    meta = materialization_metadata(result, "wal_archive_settings")
    assert meta["server_matches"] is True, meta["settings"]
    assert "barman-cloud-wal-archive" in meta["postgresql_conf"] and "archive_mode = 'on'" in meta["postgresql_conf"]
    assert "wal_compression = 'lz4'" in meta["postgresql_conf"]  # matched by the live server: fewer segments to archive
    assert "archive_command = 'nice -n 10 /" in meta["postgresql_conf"] and " --zstd --compression-level 1 " in meta["postgresql_conf"]
    assert "'barman[cloud]==3.19.1' 'zstandard==0.25.0'" in meta["docker_compose"]  # the library the compression needs
    assert "AWS_SECRET_ACCESS_KEY: ${AWS_SECRET_ACCESS_KEY}" in meta["docker_compose"]
    assert "local-secret-key" not in str(meta)


def test_restore_to_a_second_between_t2_and_t3_has_t1_and_t2_and_not_t3(
    base_backup_run, archiving_cluster, pitr_resources, pitr_instance, pitr_location, s3_server, s3_access
):
    assert base_backup_run.success
    written = {}
    with archiving_cluster.connect("loyalty") as conn:
        for mark in ("t1", "t2", "t3"):
            (written[mark],) = conn.execute(
                "INSERT INTO points_ledger (id, member, points) VALUES (%s, %s, 1) RETURNING written_at",
                (10_000 + len(written), mark)).fetchone()
            time.sleep(1.5)
        (segment,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        conn.execute("SELECT pg_switch_wal()")
    # to the second, in Harare time without a zone, as an operator types it
    target = datetime.fromtimestamp(math.ceil(written["t2"].timestamp()), HARARE)
    assert written["t2"] < target < written["t3"]
    wait_in_bucket(s3_server.client(), pitr_location, segment, timeout_s=60)  # t3's segment: recovery can pass the target
    target_dir = scratch_dir()
    # t3's segment as archive_command wrote it before the compression changed: recovery reads .gz and .zst alike
    assert archive_as_before_the_change(s3_server.client(), pitr_location, s3_access, segment, target_dir).endswith(".gz")
    port = free_port()
    try:
        result = run_restore(pitr_resources, pitr_instance, target_time=target.replace(tzinfo=None).isoformat(),
                             target_dir=str(target_dir / "new"), port=port, progress_interval_seconds=2,
                             server_settings="shared_buffers=48MB,shared_preload_libraries=")  # a smaller machine, no preload libraries
        assert result.success, failure_message(result)
        meta = op_metadata(result)
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=archiving_cluster.password,
                             dbname="loyalty", autocommit=True) as conn:
            members = {row[0] for row in conn.execute("SELECT member FROM points_ledger WHERE id >= 10000")}
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False  # promoted: a usable server
            assert conn.execute("SELECT count(*) FROM points_ledger WHERE id <= 1000").fetchone()[0] == 1000
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "48MB"  # the job's server_settings won
        assert meta["server_settings"] == "shared_buffers=48MB,shared_preload_libraries="
        assert members == {"t1", "t2"}
        recovered = datetime.fromisoformat(meta["recovered_to"])
        assert written["t2"] <= recovered <= target and meta["rto_s"] > 0 and meta["restored_bytes"] > 1_000_000
        assert meta["segments_restored"] >= 1 and meta["running"] is True and meta["port"] == port
        # the first segments were fetched while the base backup downloaded; the spool is gone once promoted
        assert meta["wal_prefetched_segments"] >= 1 and not (target_dir / "new" / "walspool").exists()
        # paused at the target, then promoted on request: no end-of-recovery checkpoint waited for
        server_log = (target_dir / "new" / "server.log").read_text()
        assert "pausing at the end of recovery" in server_log and "received promote request" in server_log
        assert "checkpoint starting: end-of-recovery" not in server_log and meta["promote_s"] > 0
    finally:
        stop = ScratchInstance(
            target_dir / "new", port, archiving_cluster.bin_dir, environment={"PATH": "/usr/bin:/bin"})
        stop.remove()
        shutil.rmtree(target_dir, ignore_errors=True)


def test_wal_is_fetched_ahead_as_whole_segments_and_refilled_as_recovery_takes_them(
    base_backup_run, archiving_cluster, pitr_resources, pitr_location, s3_server, tmp_path
):
    """What the recovering instance finds in its spool: whole segments from the base backup's first one on,
    two at first, then (following recovery) refilled in order as it takes them, until the end of the archive;
    a fetch that fails leaves nothing, and the log says recovery fetches each segment itself."""
    engine = pitr_resources["pitr"].engine(pitr_resources["offsite"], pitr_resources["postgres"])
    begin_wal = materialization_metadata(base_backup_run, "base_backup")["begin_wal"]
    with archiving_cluster.connect("loyalty") as conn:  # at least five segments from the base backup on
        conn.execute("CREATE TABLE IF NOT EXISTS wal_fetch_ahead (n int)")
        for n in range(5):
            conn.execute("INSERT INTO wal_fetch_ahead VALUES (%s)", (n,))
            (segment,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
            conn.execute("SELECT pg_switch_wal()")
    wait_in_bucket(s3_server.client(), pitr_location, segment, timeout_s=60)
    spool = tmp_path / "walspool"
    lines: list[str] = []
    ahead = WalPrefetch(engine, begin_wal, spool, 2, default_os_user())
    ahead.start()
    assert ahead.join(lines.append) == 2 and sorted(p.name for p in spool.iterdir())[0] == begin_wal, lines
    taken = []
    ahead.follow()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not taken or taken[-1] < segment):  # recovery takes the oldest
            waiting = sorted(p.name for p in spool.iterdir())
            if waiting:
                assert (spool / waiting[0]).stat().st_size == 16 * 1024 * 1024  # whole, never a file being written
                if default_os_user():  # the recovering instance's OS user reads it, not root
                    assert (spool / waiting[0]).owner() == default_os_user()
                (spool / waiting[0]).rename(tmp_path / "RECOVERYXLOG")
                taken.append(waiting[0])
            time.sleep(0.05)
    finally:
        ahead.stop()
    first = int(begin_wal[16:], 16)
    assert taken[:6] == [begin_wal[:16] + f"{n:08X}" for n in range(first, first + 6)], taken  # in order, none missed
    assert segment in taken and ahead.runs >= 3 and ahead.fetched == len(taken) + len(list(spool.iterdir()))
    assert not (tmp_path / "walspool.incoming").exists()
    never_archived = begin_wal[:16] + "000000FE"
    failed = WalPrefetch(engine, never_archived, tmp_path / "spool2", 4)
    failed.start()
    assert failed.join(lines.append) == 0 and list((tmp_path / "spool2").iterdir()) == []
    assert "fetching WAL ahead failed (recovery fetches each segment itself)" in lines[-1] and never_archived in lines[-1]


def test_a_recovery_longer_than_its_first_fetch_replays_the_segments_fetched_while_it_runs(
    base_backup_run, archiving_cluster, pitr_resources, tmp_path
):
    """The whole recovery, with two segments fetched at first: the rest are fetched while the instance (the
    postgres OS user when the tests run as root) recovers, and it replays every one of them to the end."""
    engine = pitr_resources["pitr"].engine(pitr_resources["offsite"], pitr_resources["postgres"])
    backup = max(engine.list_backups(), key=lambda b: b.end_time)
    with archiving_cluster.connect("loyalty") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wal_fetch_ahead (n int)")
        for n in range(100, 106):  # six more segments after the base backup
            conn.execute("INSERT INTO wal_fetch_ahead VALUES (%s)", (n,))
            (segment,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
            conn.execute("SELECT pg_switch_wal()")
    wait_in_bucket(pitr_resources["offsite"].client(), engine.location, segment, timeout_s=60)
    instance = ScratchInstance(scratch_dir() / "recovered", free_port(), archiving_cluster.bin_dir,
                               environment={"PATH": "/usr/bin:/bin", **engine.access.env()})
    try:
        result = recover(engine, instance, backup, RecoveryTarget("latest"),
                         restore_command(server_engine_dir(), engine.location, engine.access, str(instance.spool_dir)),
                         pitr_resources["postgres"].spec(), print, interval_s=2, prefetch_segments=2)
        assert result.prefetch_runs >= 2 and result.prefetched_segments > 2, result  # more than the first fetch
        with instance.connect(pitr_resources["postgres"].spec(), "loyalty") as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
            assert conn.execute("SELECT count(*) FROM wal_fetch_ahead WHERE n >= 100").fetchone()[0] == 6
        assert not instance.spool_dir.exists() and not instance.spool_dir.with_name("walspool.incoming").exists()
    finally:
        instance.remove()
        shutil.rmtree(instance.base_dir.parent, ignore_errors=True)


def test_the_promotion_asked_for_ahead_is_taken_at_the_restore_point_and_never_before_it(
    base_backup_run, archiving_cluster, pitr_resources
):
    """The promotion is requested as soon as the recovering instance accepts connections, long before the
    target (each segment is held back half a second here). PostgreSQL still replays up to the restore point,
    the row before it is there and the row after it is not, and it promotes the moment it pauses there,
    without the job having to promote it at the pause. The source's own logging settings do not move the
    recovered instance's log, which the job reads."""
    engine = pitr_resources["pitr"].engine(pitr_resources["offsite"], pitr_resources["postgres"])
    backup = max(engine.list_backups(), key=lambda b: b.end_time)
    with archiving_cluster.connect("loyalty") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS promoted_ahead (n int)")
        for n in range(4):  # segments to replay after the instance accepts connections
            conn.execute("INSERT INTO promoted_ahead VALUES (%s)", (n,))
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("INSERT INTO promoted_ahead VALUES (10)")
        conn.execute("SELECT pg_create_restore_point('promoted_ahead')")
        conn.execute("INSERT INTO promoted_ahead VALUES (11)")  # after the target
        (segment,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        conn.execute("SELECT pg_switch_wal()")
    wait_in_bucket(pitr_resources["offsite"].client(), engine.location, segment, timeout_s=60)
    # a source that logs through its own collector with its own prefix: the recovered instance's log stays ours
    source_logging = {"logging_collector": "on", "log_line_prefix": "%t %u ", "log_timezone": "Africa/Harare"}
    instance = ScratchInstance(scratch_dir() / "recovered", free_port(), archiving_cluster.bin_dir, settings=source_logging,
                               environment={"PATH": "/usr/bin:/bin", **engine.access.env()})
    lines: list[str] = []
    try:
        slow = "sleep 0.5; " + restore_command(server_engine_dir(), engine.location, engine.access, str(instance.spool_dir))
        result = recover(engine, instance, backup, RecoveryTarget("name", name="promoted_ahead"), slow,
                         pitr_resources["postgres"].spec(), lines.append, interval_s=2)
        with instance.connect(pitr_resources["postgres"].spec(), "loyalty") as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
            assert [n for (n,) in conn.execute("SELECT n FROM promoted_ahead ORDER BY n")] == [0, 1, 2, 3, 10]
        server_log = instance.log_text()
        assert "recovery stopping at restore point \"promoted_ahead\"" in server_log
        # the request was there when recovery paused: read at once, not promoted by the job at the pause
        paused = server_log.index("pausing at the end of recovery")
        assert "received promote request" in server_log[paused:paused + 400], server_log[paused:paused + 400]
        assert not any("recovery paused at its target" in line for line in lines), lines
        assert "checkpoint starting: end-of-recovery" not in server_log and 0 < result.timings["promote_s"] < 5
        assert result.segments_restored >= 5 and not (instance.data_dir / "log").exists()  # read from server.log
    finally:
        instance.remove()
        shutil.rmtree(instance.base_dir.parent, ignore_errors=True)


def test_a_restore_point_the_archive_does_not_hold_fails_saying_what_that_means(
    base_backup_run, archiving_cluster, pitr_resources, pitr_instance
):
    """A mistyped restore point name: PostgreSQL replays the whole archive, never meets it and stops without
    promoting. The run fails, says what that means and where to look, and leaves the directory for inspection."""
    assert base_backup_run.success
    target_dir = scratch_dir()
    port = free_port()
    try:
        result = run_restore(pitr_resources, pitr_instance, target_name="before_the_migraton",
                             target_dir=str(target_dir / "new"), port=port, progress_interval_seconds=2)
        assert not result.success
        message = failure_message(result)
        assert "recovery stopped without reaching its target: the archive ends before restore point " \
               "'before_the_migraton'" in message, message
        assert "recovery ended before configured recovery target was reached" in message  # PostgreSQL's own line
        assert "left for inspection" in message and (target_dir / "new").exists()
        assert not (target_dir / "new" / "data" / "postmaster.pid").exists()  # nothing left running
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        shutil.rmtree(target_dir, ignore_errors=True)


@pytest.mark.parametrize("case", ["future", "before_oldest", "not_empty", "port_in_use", "two_targets", "controlled_setting"])
def test_refusals_name_the_problem_and_change_nothing(case, base_backup_run, archiving_cluster, pitr_resources, pitr_instance):
    target_dir = scratch_dir()
    (target_dir / "keep.txt").write_text("operator's file")
    config = {"target_dir": str(target_dir / "new"), "port": 1, "latest": True}
    config["port"] = free_port()
    expected = {
        "future": ({"latest": False, "target_time": (datetime.now(HARARE) + timedelta(hours=1)).replace(tzinfo=None).isoformat()},
                   "is in the future"),
        "before_oldest": ({"latest": False, "target_time": "2020-01-01T00:00:00Z"}, "is before the oldest base backup"),
        "not_empty": ({"target_dir": str(target_dir)}, "is not empty"),
        "port_in_use": ({"port": archiving_cluster.port}, f"port {archiving_cluster.port} is in use"),
        "two_targets": ({"target_name": "x"}, "give exactly one of target_time, target_name or latest"),
        "controlled_setting": ({"server_settings": "shared_buffers=64MB,listen_addresses=*"},
                               "server_settings: listen_addresses is set by loyalty_ops"),
    }[case]
    config.update(expected[0])
    try:
        result = run_restore(pitr_resources, pitr_instance, **config)
        assert not result.success
        message = failure_message(result)
        assert "refused, nothing was changed" in message and expected[1] in message, message
        assert sorted(p.name for p in target_dir.iterdir()) == ["keep.txt"]
    finally:
        shutil.rmtree(target_dir, ignore_errors=True)


def test_the_nightly_pitr_drill_recovers_exactly_to_its_restore_point(base_backup_run, pitr_resources, pitr_instance):
    from loyalty_ops.definitions import defs

    nightly = defs.resolve_job_def("nightly_backup_job")
    assert "pitr_drill" in {n.name for n in nightly.graph.nodes}
    assert nightly.tags["loyalty_ops/database_lock"] and pitr_drill.op.pool == "loyalty_db"
    result = dg.materialize([pitr_drill, pitr_drill_recovered_to_the_mark], resources=pitr_resources, instance=pitr_instance, raise_on_error=False)
    meta = materialization_metadata(result, "pitr_drill")
    assert result.success and meta["passed"] is True, meta.get("message")
    assert meta["marker_present"] is True and meta["after_target_absent"] is True and meta["scratch_removed"] is True
    assert 0 < meta["rpo_s"] < 30 and meta["rto_s"] > 0 and meta["base_backup_id"]
    assert check_evaluations(result) == {"pitr_drill_recovered_to_the_mark": True}


def test_s3_down_archiving_fails_pages_wal_waits_in_pg_wal_then_catches_up_and_resolves(
    base_backup_run, archiving_cluster, pitr_resources, pitr_instance, s3_proxy, webhook_server  # noqa: F811
):
    alerting = AlertingResource(webserver_base_url="http://dagster.test", webhook_url=f"{webhook_server.url}/hook",
                                retry_backoff_seconds=0.01)
    sensor_resources = {"alerting": alerting, "postgres": pitr_resources["postgres"]}
    resources = {**pitr_resources, "pitr": pitr_test_resource(max_lag_seconds=2.0)}
    definitions = dg.Definitions(assets=[wal_archive_health], resources=resources)

    def health():
        return dg.materialize([wal_archive_health], resources=resources, instance=pitr_instance, raise_on_error=False,
                              tags={"loyalty_ops/severity": "critical"})

    def tick(cursor=None):
        with dg.build_sensor_context(instance=pitr_instance, cursor=cursor, resources=sensor_resources,
                                     definitions=definitions) as context:
            return page_on_failed_checks.evaluate_tick(context)

    cursor = tick().cursor
    rule = s3_proxy.fail(lambda r: r.method == "PUT" and "/wals/" in r.path)
    try:
        with archiving_cluster.connect("loyalty") as conn:
            for _ in range(2):
                conn.execute("INSERT INTO points_ledger (id, member, points) SELECT g, 'down', 1 FROM generate_series(20000, 20100) g "
                             "ON CONFLICT DO NOTHING")
                conn.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 30
            while conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.5)  # the waiting segment gets older than the 2 s limit
            ready = conn.execute("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'").fetchone()[0]
        assert ready >= 1  # the WAL waits on the server, nothing is lost
        down = health()
        checks = check_evaluations(down)
        meta = materialization_metadata(down, "wal_archive_health")
        assert checks["wal_archiving_succeeds"] is False and checks["wal_archive_lag_within_limit"] is False, meta
        assert meta["ready_segments"] >= 1 and meta["failed_count"] >= 1 and meta["lag_s"] > 2
        cursor = tick(cursor).cursor
        triggered = {b["dedup_key"] for b in webhook_server.bodies() if b.get("event_action") == "trigger"}
        assert any("wal_archiving_succeeds" in k for k in triggered) and any("wal_archive_lag_within_limit" in k for k in triggered)
    finally:
        s3_proxy.rules.remove(rule)
    with archiving_cluster.connect("loyalty") as conn:
        # a new segment wakes the archiver at once (after three failures in a row it otherwise waits up to 60 s)
        conn.execute("UPDATE points_ledger SET points = points + 1 WHERE id = 1")
        conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = conn.execute("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'").fetchone()[0]
            if ready == 0:
                break
            time.sleep(0.3)
        conn.execute("SELECT pg_switch_wal()")  # a success after the failures
        time.sleep(2)
    assert ready == 0, "archiving did not catch up once S3 was back"
    back = health()
    assert all(check_evaluations(back).values()), materialization_metadata(back, "wal_archive_health")["problems"]
    assert materialization_metadata(back, "wal_archive_health")["missing_segments"] == []
    tick(cursor)
    resolved = {b["dedup_key"] for b in webhook_server.bodies() if b.get("event_action") == "resolve"}
    assert triggered <= resolved


def test_a_damaged_wal_segment_in_the_bucket_fails_the_drill_loudly(base_backup_run, pitr_resources, pitr_instance, pitr_location, s3_server):
    meta = materialization_metadata(base_backup_run, "base_backup")
    client = s3_server.client()
    damaged = segment_in_bucket(client, pitr_location, meta["end_wal"])
    original = client.get_object(Bucket=pitr_location.bucket, Key=damaged.key)["Body"].read()
    client.put_object(Bucket=pitr_location.bucket, Key=damaged.key, Body=compressed_like(damaged.key, b"\0" * 16 * 1024 * 1024))
    try:
        result = dg.materialize([pitr_drill, pitr_drill_recovered_to_the_mark], resources=pitr_resources, instance=pitr_instance, raise_on_error=False)
    finally:
        client.put_object(Bucket=pitr_location.bucket, Key=damaged.key, Body=original)
    drill = materialization_metadata(result, "pitr_drill")
    assert not result.success, drill  # the blocking check fails the run: it pages
    assert drill["passed"] is False and drill["failed_step"] == "recovery" and drill["scratch_removed"] is True
    assert "stopped before reaching its target" in drill["message"]
    assert check_evaluations(result) == {"pitr_drill_recovered_to_the_mark": False}


def test_the_morning_report_reads_lag_base_backup_and_the_last_drill(base_backup_run, pitr_instance):
    from loyalty_ops.defs.pitr.report import pitr_markdown, pitr_summary

    summary = pitr_summary(pitr_instance)
    text = pitr_markdown(summary)
    backup_id = materialization_metadata(base_backup_run, "base_backup")["backup_id"]
    assert summary["lag_now_s"] is not None and summary["lag_max_24h_s"] >= summary["lag_now_s"]
    assert summary["lag_max_24h_s"] > 2  # the S3 outage earlier in this module
    assert "Archive lag now:" in text and f"Last base backup: `{backup_id}`" in text
    assert "Last PITR drill: **FAILED** at recovery" in text  # the damaged segment, the module's last drill

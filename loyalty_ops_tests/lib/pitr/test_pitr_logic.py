"""The PITR library's pure rules: segment arithmetic and gaps, the archive's verdict, recovery targets and which
base backup serves them, the engine's dry-run read, the generated server settings. No server, no bucket."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from loyalty_ops.lib.pitr.archive import ServerArchiver, WalObject, bucket_wal, judge, segment_name, segment_parts
from loyalty_ops.lib.pitr.config import compose_change, server_settings
from loyalty_ops.lib.pitr.engine import BaseBackup, S3Access, archive_command, restore_command
from loyalty_ops.lib.pitr.instance import promotion_seconds
from loyalty_ops.lib.pitr.location import PitrConfigError, PitrLocation, check_cron, normalise_prefix
from loyalty_ops.lib.pitr.options import LEGACY_ARCHIVE, ArchiveOptions, BackupOptions, format_instance_settings, parse_instance_settings
from loyalty_ops.lib.pitr.retention import backups_in_dry_run, plan_retention
from loyalty_ops.lib.pitr.target import RecoveryRefused, choose_base_backup, make_target, parse_target_time

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=timezone.utc)
LOCATION = PitrLocation.of("loyalty-offsite", "/pitr/", "loyalty")
ACCESS = S3Access(endpoint_url="http://127.0.0.1:9000", sse="AES256", credentials={"AWS_SECRET_ACCESS_KEY": "s3cr3t"})


def wal(name: str) -> WalObject:
    return WalObject(name, f"pitr/loyalty/wals/{name[:16]}/{name}.gz", 100, NOW)


def backup(backup_id: str, end: datetime, status: str = "DONE") -> BaseBackup:
    return BaseBackup(backup_id, status, end - timedelta(minutes=5), end, "000000010000000000000002",
                      "000000010000000000000003", "0/2000028", "0/3000050", 1, 30_000_000, None)


def test_segment_numbers_cross_log_ids_and_segment_sizes():
    assert segment_parts("0000000100000001000000FF") == (1, 0x1FF)
    assert segment_name(1, 0x200) == "000000010000000200000000"
    assert segment_parts("000000020000000000000FFF", 1024 * 1024) == (2, 0xFFF)  # 1 MiB segments: 4096 per log id
    assert segment_parts("00000001.history") is None


def test_a_gap_since_the_base_backup_is_named_and_earlier_timelines_are_ignored():
    names = ["000000010000000000000001", "000000010000000000000002", "000000010000000000000004",
             "0000000100000000000000FF", "000000010000000100000000"]
    found = bucket_wal([wal(n) for n in names], "000000010000000000000002")
    assert found.missing[:2] == ("000000010000000000000003", "000000010000000000000005")
    assert found.newest.name == "000000010000000100000000" and not found.complete
    whole = bucket_wal([wal(n) for n in ("000000010000000000000002", "000000010000000000000003")], "000000010000000000000002")
    assert whole.complete and whole.segments == 2
    assert bucket_wal([], "000000010000000000000002").missing == ("000000010000000000000002",)


def server(**overrides) -> ServerArchiver:
    values = dict(archive_mode="on", wal_level="replica", archive_timeout_s=60, archived_count=10,
                  last_archived_wal="000000010000000000000003", last_archived_time=NOW - timedelta(seconds=30),
                  failed_count=0, last_failed_wal=None, last_failed_time=None, current_wal="000000010000000000000004",
                  segment_bytes=16 * 1024 * 1024, ready_segments=0, oldest_ready_time=None, now=NOW)
    return ServerArchiver(**{**values, **overrides})


def test_the_verdict_lag_failures_and_the_bucket_behind_the_server():
    bucket = bucket_wal([wal("000000010000000000000002"), wal("000000010000000000000003")], "000000010000000000000002")
    assert judge(server(), bucket, 300).healthy
    stuck = judge(server(ready_segments=3, oldest_ready_time=NOW - timedelta(seconds=400), failed_count=5,
                         last_failed_wal="000000010000000000000004", last_failed_time=NOW - timedelta(seconds=5)), bucket, 300)
    assert not stuck.lag_ok and not stuck.archiving_ok and stuck.lag_s == 400
    assert any("archive_command is failing" in p for p in stuck.problems)
    recovered = judge(server(failed_count=5, last_failed_time=NOW - timedelta(minutes=10)), bucket, 300)
    assert recovered.archiving_ok  # an old failure followed by successes is not failing
    behind = judge(server(last_archived_wal="000000010000000000000005"), bucket, 300)
    assert not behind.bucket_ok and "newest segment in the bucket is 000000010000000000000003" in " ".join(behind.problems)
    assert not judge(server(archive_mode="off"), bucket, 300).archiving_ok


def test_targets_times_without_a_zone_are_harare_and_the_right_base_backup_is_chosen():
    assert parse_target_time("2026-12-01T14:30:00").utcoffset() == timedelta(hours=2)
    assert parse_target_time("2026-12-01T12:30:00Z") == datetime(2026, 12, 1, 12, 30, tzinfo=timezone.utc)
    backups = [backup("20261122T010000", NOW - timedelta(days=10)), backup("20261129T010000", NOW - timedelta(days=3)),
               backup("20261201T010000", NOW - timedelta(days=1), status="FAILED")]
    four_days = make_target((NOW - timedelta(days=4)).isoformat(), None, False)
    assert choose_base_backup(backups, four_days, NOW).backup_id == "20261122T010000"
    assert choose_base_backup(backups, make_target(None, None, True), NOW).backup_id == "20261129T010000"
    with pytest.raises(RecoveryRefused, match="in the future"):
        choose_base_backup(backups, make_target((NOW + timedelta(minutes=1)).isoformat(), None, False), NOW)
    with pytest.raises(RecoveryRefused, match="before the oldest base backup"):
        choose_base_backup(backups, make_target((NOW - timedelta(days=20)).isoformat(), None, False), NOW)
    with pytest.raises(RecoveryRefused, match="ends after target_time"):
        choose_base_backup(backups, four_days, NOW, backup_id="20261129T010000")
    with pytest.raises(RecoveryRefused, match="ISO 8601"):
        make_target("yesterday at noon", None, False)
    assert make_target(None, "before_migration", False).settings()["recovery_target_name"] == "before_migration"


def test_the_generated_commands_carry_no_secret_and_quote_their_arguments():
    command = archive_command("/opt/barman/bin", LOCATION, ACCESS)
    assert command == ("nice -n 10 /opt/barman/bin/barman-cloud-wal-archive --endpoint-url http://127.0.0.1:9000 -e AES256 "
                       "--zstd --compression-level 1 s3://loyalty-offsite/pitr loyalty %p")
    assert archive_command("/opt/barman/bin", LOCATION, ACCESS, LEGACY_ARCHIVE) == (
        "/opt/barman/bin/barman-cloud-wal-archive --endpoint-url http://127.0.0.1:9000 -e AES256 --gzip --compression-level 6 "
        "s3://loyalty-offsite/pitr loyalty %p")  # what archive_command ran before the levers, at full priority
    assert restore_command("/opt/barman/bin", LOCATION, ACCESS, "/tmp/x/wal spool") == (
        "test %f != 00000001.history && { { test -f '/tmp/x/wal spool'/%f && { rm -f '/tmp/x/wal spool'/*.taken; "
        "ln -f '/tmp/x/wal spool'/%f '/tmp/x/wal spool'/%f.taken 2>/dev/null; mv -f '/tmp/x/wal spool'/%f %p; }; } || "
        "{ test -f '/tmp/x/wal spool'/%f.taken && cp '/tmp/x/wal spool'/%f.taken %p; } || "
        "/opt/barman/bin/barman-cloud-wal-restore --endpoint-url http://127.0.0.1:9000 --parallel 16 "
        "--spool-dir '/tmp/x/wal spool' s3://loyalty-offsite/pitr loyalty %f %p; }"
    )  # a prefetched segment is moved into place without starting the engine (and the last one kept for a second
    # request); timeline 1 has no history file
    assert restore_command("/opt/barman/bin", LOCATION, ACCESS) == (
        "/opt/barman/bin/barman-cloud-wal-restore --endpoint-url http://127.0.0.1:9000 s3://loyalty-offsite/pitr loyalty %f %p")
    settings = server_settings("/opt/barman/bin", LOCATION, ACCESS, 60)
    assert settings["archive_timeout"] == "60s" and settings["archive_mode"] == "on"
    assert "s3cr3t" not in str(settings) + compose_change(settings) and "${AWS_SECRET_ACCESS_KEY}" in compose_change(settings)
    assert ACCESS.env() == {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}


def test_the_recovering_instances_restore_command_as_the_shell_runs_it(tmp_path):
    """What PostgreSQL gets from the restore_command with a spool, run by /bin/sh as the server runs it, with an
    engine that is not installed (exit 127 says the engine was started): a spooled segment is moved into
    place without the engine; anything else goes to the engine; timeline 1's history file is "not there" (1)."""
    spool, wal = tmp_path / "walspool", tmp_path / "pg_wal"
    spool.mkdir()
    wal.mkdir()
    command = restore_command(str(tmp_path / "no-engine"), LOCATION, ACCESS, str(spool))

    def run(name: str) -> int:
        line = command.replace("%f", name).replace("%p", str(wal / "RECOVERYXLOG"))
        return subprocess.run(["/bin/sh", "-c", line], capture_output=True).returncode

    segment, following = "000000010000000000000007", "000000010000000000000008"
    (spool / segment).write_bytes(b"w" * 1024)
    (spool / following).write_bytes(b"x" * 1024)
    assert run(segment) == 0 and (wal / "RECOVERYXLOG").read_bytes() == b"w" * 1024 and not (spool / segment).exists()
    (wal / "RECOVERYXLOG").rename(wal / segment)  # as PostgreSQL keeps a restored segment
    # PostgreSQL asks for the last segment again when recovery ends: the copy kept beside the spool answers
    assert run(segment) == 0 and (wal / "RECOVERYXLOG").read_bytes() == b"w" * 1024
    assert (wal / segment).read_bytes() == b"w" * 1024  # a copy: PostgreSQL's own file is untouched
    assert run(following) == 0 and (wal / "RECOVERYXLOG").read_bytes() == b"x" * 1024
    assert sorted(p.name for p in spool.iterdir()) == [following + ".taken"]  # only the last taken is kept
    assert run(segment) == 127  # neither in the spool nor the last taken: the engine is asked
    assert run("00000002.history") == 127  # a later timeline's history may exist: the engine is asked
    assert run("00000001.history") == 1  # never exists: answered without the engine


def test_a_recovered_instances_settings_are_parsed_and_the_ones_loyalty_ops_sets_are_refused():
    assert parse_instance_settings("shared_buffers=1GB, huge_pages = off,shared_preload_libraries=,", "F") == {
        "shared_buffers": "1GB", "huge_pages": "off", "shared_preload_libraries": ""}  # an empty value sets it empty
    assert parse_instance_settings(None, "F") == {} and parse_instance_settings("", "F") == {}
    assert parse_instance_settings("pg_stat_statements.max=500", "F") == {"pg_stat_statements.max": "500"}
    settings = parse_instance_settings("shared_buffers=1GB,shared_preload_libraries=", "F")
    assert parse_instance_settings(format_instance_settings(settings), "F") == settings  # metadata reads back
    for bad, words in [("shared_buffers", "'shared_buffers' is not NAME=VALUE"), ("1x=2", "'1x=2' is not NAME=VALUE"),
                       ("shared_preload_libraries=pg_stat_statements,auto_explain", "so a value cannot hold one"),
                       ("port=5433", "port is set by loyalty_ops"), ("archive_mode=on", "archive_mode is set by loyalty_ops"),
                       ("restore_command=cp", "restore_command is set by loyalty_ops"),
                       ("logging_collector=on", "logging_collector is set by loyalty_ops"),
                       ("recovery_min_apply_delay=5min", "recovery_min_apply_delay is set by loyalty_ops"),
                       ("recovery_target_time=now", "the job's target_time, target_name or latest")]:
        with pytest.raises(PitrConfigError) as refused:
            parse_instance_settings(bad, "server_settings")
        assert str(refused.value).startswith("server_settings: ") and words in str(refused.value), str(refused.value)


def test_the_promotion_is_timed_from_the_target_reached_to_accepting_connections():
    """From the recovered instance's own log (stamped in UTC, whatever the source's logging): the end of replay
    (the target reached, or for ``latest`` the end of the WAL) to the server accepting connections."""
    log = """2026-12-02 22:29:42.639 UTC [1322] LOG:  database system is ready to accept read-only connections
2026-12-02 22:29:43.837 UTC [1328] LOG:  restored log file "000000010000000000000017" from archive
2026-12-02 22:29:44.383 UTC [1328] LOG:  recovery stopping before commit of transaction 125648, time 2026-12-02 22:29:38.441326+00
2026-12-02 22:29:44.383 UTC [1328] LOG:  pausing at the end of recovery
2026-12-02 22:29:44.383 UTC [1328] LOG:  received promote request
2026-12-02 22:29:44.383 UTC [1328] LOG:  redo done at 0/17792870 system usage: CPU: user: 0.50 s, system: 0.70 s, elapsed: 1.75 s
2026-12-02 22:29:44.721 UTC [1328] LOG:  selected new timeline ID: 2
2026-12-02 22:29:44.793 UTC [1322] LOG:  database system is ready to accept connections
"""
    assert promotion_seconds(log) == pytest.approx(0.41)
    latest = "\n".join(line for line in log.splitlines() if "recovery stopping" not in line)
    assert promotion_seconds(latest) == pytest.approx(0.41)  # from "redo done"
    assert promotion_seconds(log.replace("ready to accept connections", "shutting down")) is None  # never ready
    assert promotion_seconds("LOG:  redo done at 0/1") is None  # no timestamps: not guessed


def test_location_rules():
    assert LOCATION.url == "s3://loyalty-offsite/pitr" and LOCATION.wal_prefix == "pitr/loyalty/wals/"
    assert normalise_prefix("a/b/") == "a/b"
    for bad in ("s3://x/pitr", "", "a//b", "a b"):
        with pytest.raises(PitrConfigError, match="LOYALTY_PITR_PREFIX"):
            normalise_prefix(bad)
    assert check_cron("0  1 * * 0") == "0 1 * * 0"
    with pytest.raises(PitrConfigError, match="five cron fields"):
        check_cron("0 1 * *")


def test_retention_reads_the_engine_dry_run_and_blocks_on_the_floor():
    output = ("Skipping deletion of objects ['pitr/loyalty/base/20261101T010000/data.tar', "
              "'pitr/loyalty/base/20261101T010000/backup.info'] due to --dry-run option\n")
    assert backups_in_dry_run(output) == ["20261101T010000"]
    backups = [backup("20261101T010000", NOW - timedelta(days=31)), backup("20261129T010000", NOW - timedelta(days=3))]
    assert not plan_retention(30, backups, ["20261101T010000"], "20261129T010000", []).blocked
    assert plan_retention(30, backups, ["20261101T010000"], "20261101T010000", []).blocked
    assert plan_retention(30, backups, [], None, ["archive_command failing"]).blocked
    rows = plan_retention(30, backups, ["20261101T010000"], "20261129T010000", []).rows()
    assert [r[3] for r in rows] == ["delete", "keep"]


def test_backup_labels_and_partial_files_are_never_taken_for_segments():
    from loyalty_ops.lib.pitr.archive import wal_file_name

    assert wal_file_name("p/s/wals/0000000100000000/000000010000000000000002.gz") == "000000010000000000000002"
    assert wal_file_name("p/s/wals/0000000100000000/000000010000000000000002") == "000000010000000000000002"
    for other in ("000000010000000000000002.00000028.backup.gz", "000000010000000000000003.partial", "00000002.history.gz"):
        assert segment_parts(wal_file_name(f"p/s/wals/0000000100000000/{other}")) is None


def test_the_compression_levers_build_the_engine_arguments_and_refuse_what_the_engine_would_change():
    assert ArchiveOptions("lz4", None, 0).compression_args() == ["--lz4", "--compression-level", "0"]
    assert ArchiveOptions("gzip", 9, 5).compression_args() == ["--gzip", "--compression-level", "9"]
    assert ArchiveOptions("none", None, 0).compression_args() == [] and ArchiveOptions("snappy").compression_args() == ["--snappy"]
    assert ArchiveOptions("gzip", 1, 0).priority_prefix() == [] and ArchiveOptions().priority_prefix() == ["nice", "-n", "10"]
    assert ArchiveOptions().packages() == ("zstandard==0.25.0",) and ArchiveOptions("gzip").packages() == ()
    for bad, words in (({"compression": "gzip", "level": 12}, "must be 1-9 for gzip"), ({"compression": "snappy", "level": 1}, "has no levels"),
                       ({"compression": "bzip2"}, "LOYALTY_PITR_WAL_COMPRESSION must be one of"), ({"nice": 20}, "0-19")):
        with pytest.raises(PitrConfigError, match=words):
            ArchiveOptions(**bad)
    assert BackupOptions().args() == ["-J", "2", "--lz4"] and BackupOptions("none", 1).args() == ["-J", "1"]
    assert BackupOptions("gzip", 4).args() == ["-J", "4", "--gzip"]
    with pytest.raises(PitrConfigError, match="LOYALTY_PITR_BASE_BACKUP_COMPRESSION"):
        BackupOptions("zstd")  # barman-cloud-backup has no zstd
    assert server_settings("/opt/barman/bin", LOCATION, ACCESS, 60)["wal_compression"] == "lz4"  # fewer segments to archive
    assert server_settings("/opt/barman/bin", LOCATION, ACCESS, 60, LEGACY_ARCHIVE)["wal_compression"] == "off"
    with pytest.raises(PitrConfigError, match="LOYALTY_PITR_SERVER_WAL_COMPRESSION must be one of"):
        ArchiveOptions(server_wal_compression="on")
    settings = server_settings("/opt/barman/bin", LOCATION, ACCESS, 60, ArchiveOptions("lz4", 3, 0))
    assert settings["archive_command"].startswith("/opt/barman/bin/barman-cloud-wal-archive ") and "--lz4 --compression-level 3" in settings["archive_command"]
    assert "'barman[cloud]==3.19.1' 'lz4==4.4.5'" in compose_change(settings, packages=ArchiveOptions("lz4").packages())

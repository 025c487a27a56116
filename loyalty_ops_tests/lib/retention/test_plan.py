"""Unit tests of the pure retention planner, including property-based tests (hypothesis)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyalty_ops.lib.backup.naming import backup_name
from loyalty_ops.lib.retention.plan import (
    DELETE,
    KEEP,
    Evidence,
    IntegrityResult,
    Inventory,
    LocalFile,
    LogFile,
    MultipartUpload,
    PolicyError,
    RemoteObject,
    RetentionPolicy,
    classify_key,
    classify_local,
    plan_retention,
    restrict_to,
)

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=timezone.utc)
DB = "loyalty"
PREFIX = "backups/"
OK = IntegrityResult(True)
BAD = IntegrityResult(False, "backup_checksum_matches failed")


def nightly(days_ago: float, db: str = DB, compression: str = "gzip"):
    return backup_name(db, NOW - timedelta(days=days_ago), compression)


def world(days, *, verified=None, offsite=True, size=1000, sidecars=True, extra_local=(), extra_remote=()):
    """Local files (+ sidecars) and S3 copies for backups taken ``days`` days ago."""
    local, remote, integrity = [], [], {}
    for d in days:
        name = nightly(d)
        mtime = name.taken_at + timedelta(minutes=5)
        local.append(LocalFile(name.filename, size, mtime))
        if sidecars:
            local.append(LocalFile(name.filename + ".sha256", 90, mtime))
            local.append(LocalFile(name.filename + ".manifest.json", 400, mtime))
        if offsite:
            remote.append(RemoteObject(name.s3_key(PREFIX), size, mtime))
            if sidecars:
                remote.append(RemoteObject(name.s3_key(PREFIX) + ".sha256", 90, mtime))
                remote.append(RemoteObject(name.s3_key(PREFIX) + ".manifest.json", 400, mtime))
        integrity[name.filename] = OK if (verified is None or d in verified) else BAD
    inv = Inventory(
        DB,
        local=tuple(local) + tuple(extra_local),
        remote=(tuple(remote) + tuple(extra_remote)) if offsite else None,
        prefix=PREFIX,
    )
    return inv, Evidence(integrity=integrity)


def actions(plan, location="local", kind="backup"):
    return {i.name: i.action for i in plan.items if i.location == location and i.kind == kind}


def test_keeps_everything_younger_than_keep_days_and_deletes_older_with_sidecars():
    inv, ev = world(range(0, 40))
    plan = plan_retention(inv, ev, RetentionPolicy(), NOW)
    assert plan.blocked is None
    local = actions(plan)
    for d in range(40):
        expected = KEEP if d < 30 else DELETE
        assert local[nightly(d).filename] == expected, d
    # sidecars follow their backup, locally and on S3
    assert actions(plan, "local", "sidecar")[nightly(35).filename + ".sha256"] == DELETE
    assert actions(plan, "local", "sidecar")[nightly(5).filename + ".manifest.json"] == KEEP
    assert actions(plan, "s3", "sidecar")[nightly(35).s3_key(PREFIX) + ".sha256"] == DELETE
    assert actions(plan, "s3")[nightly(35).s3_key(PREFIX)] == DELETE
    assert plan.bytes_to_free == 2 * 10 * (1000 + 90 + 400)
    md = plan.markdown()
    assert "over 30 days" in md and "younger than 30 days" in md


def test_floor_keeps_newest_verified_whatever_their_age():
    # The guide's find -mtime +30 would delete all of these.
    inv, ev = world([40, 41, 45, 50, 60], verified={40, 45, 50, 60}, offsite=False)
    inv = Inventory(DB, local=inv.local, remote=None, prefix=PREFIX)
    policy = RetentionPolicy(max_backup_age_hours=0)
    ev = Evidence(integrity={**ev.integrity, nightly(40).filename: OK})
    plan = plan_retention(inv, ev, policy, NOW)
    assert plan.blocked is None
    local = actions(plan)
    assert [local[nightly(d).filename] for d in (40, 41, 45, 50, 60)] == [KEEP, DELETE, KEEP, KEEP, DELETE]
    reason = next(i.reason for i in plan.items if i.name == nightly(50).filename)
    assert "floor" in reason


def test_newest_backup_unverified_blocks_everything():
    inv, ev = world(range(0, 60), verified=set(range(31, 60)))
    plan = plan_retention(inv, ev, RetentionPolicy(), NOW)
    assert plan.blocked and "has not passed its integrity checks" in plan.blocked
    assert plan.deletions == ()
    assert "BLOCKED" in plan.markdown()


def test_newest_backup_without_any_check_results_blocks():
    inv, ev = world(range(0, 5))
    integrity = dict(ev.integrity)
    del integrity[nightly(0).filename]
    plan = plan_retention(inv, Evidence(integrity=integrity), RetentionPolicy(), NOW)
    assert plan.blocked and "no integrity check results" in plan.blocked


def test_failed_backup_in_history_whose_file_is_gone_still_blocks():
    inv, ev = world(range(1, 40))
    integrity = {**ev.integrity, nightly(0).filename: BAD}
    plan = plan_retention(inv, Evidence(integrity=integrity), RetentionPolicy(), NOW)
    assert plan.blocked and nightly(0).filename in plan.blocked
    assert plan.deletions == ()


def test_stale_newest_backup_blocks():
    inv, ev = world(range(5, 40))
    plan = plan_retention(inv, ev, RetentionPolicy(max_backup_age_hours=48), NOW)
    assert plan.blocked and "backups seem to be failing" in plan.blocked
    assert plan_retention(inv, ev, RetentionPolicy(max_backup_age_hours=0), NOW).blocked is None


def test_no_backup_at_all_blocks():
    plan = plan_retention(Inventory(DB, remote=()), Evidence(), RetentionPolicy(), NOW)
    assert plan.blocked and "no backup" in plan.blocked


def test_drills_required_for_the_newest_once_they_exist():
    inv, ev = world(range(0, 40))
    drills = {nightly(1).filename: True}
    plan = plan_retention(inv, Evidence(integrity=ev.integrity, drills=drills), RetentionPolicy(), NOW)
    assert plan.blocked and "restore drill" in plan.blocked
    drills[nightly(0).filename] = True
    assert plan_retention(inv, Evidence(integrity=ev.integrity, drills=drills), RetentionPolicy(), NOW).blocked is None
    # No drill ever ran: not required.
    assert plan_retention(inv, ev, RetentionPolicy(), NOW).blocked is None


def test_failed_drill_disqualifies_a_backup_from_the_floor():
    inv, ev = world([0, 40, 41, 42, 43])
    drills = {nightly(0).filename: True, nightly(40).filename: False}
    plan = plan_retention(inv, Evidence(integrity=ev.integrity, drills=drills), RetentionPolicy(min_keep=3), NOW)
    local = actions(plan)
    assert local[nightly(40).filename] == DELETE
    assert local[nightly(41).filename] == KEEP and local[nightly(42).filename] == KEEP
    assert local[nightly(43).filename] == DELETE


def test_local_backup_not_confirmed_offsite_is_kept():
    inv, ev = world(range(0, 40))
    missing = nightly(35).s3_key(PREFIX)
    wrong_size = nightly(36)
    remote = tuple(
        RemoteObject(o.key, 5, o.last_modified) if o.key == wrong_size.s3_key(PREFIX) else o
        for o in inv.remote
        if o.key != missing
    )
    plan = plan_retention(Inventory(DB, inv.local, remote, PREFIX), ev, RetentionPolicy(), NOW)
    local = actions(plan)
    assert local[nightly(35).filename] == KEEP
    assert local[nightly(36).filename] == KEEP
    assert local[nightly(37).filename] == DELETE
    # its sidecars stay with it
    assert actions(plan, "local", "sidecar")[nightly(35).filename + ".sha256"] == KEEP
    reason = next(i.reason for i in plan.items if i.name == nightly(36).filename)
    assert "no confirmed offsite copy" in reason and "size differs" in reason
    # without an offsite copy configured, the rule does not apply
    plan = plan_retention(Inventory(DB, inv.local, None, PREFIX), ev, RetentionPolicy(), NOW)
    assert actions(plan)[nightly(35).filename] == DELETE


def test_gfs_keeps_daily_weekly_monthly_in_platform_timezone():
    inv, ev = world(range(0, 400), offsite=False, sidecars=False)
    policy = RetentionPolicy(keep_days=7, min_keep=1, gfs_daily=10, gfs_weekly=8, gfs_monthly=12)
    plan = plan_retention(inv, ev, policy, NOW, tz=ZoneInfo("Africa/Harare"))
    kept = [i for i in plan.items if i.kind == "backup" and i.action == KEEP]
    assert any("GFS monthly" in i.reason for i in kept)
    assert sum("GFS weekly" in i.reason for i in kept) == 8
    assert sum("GFS daily" in i.reason for i in kept) == 10
    assert sum("GFS monthly" in i.reason for i in kept) == 12
    # 10 daily overlap the 7-day window; weekly and monthly add older ones
    assert 15 <= len(kept) <= 7 + 3 + 8 + 12


def test_scope_oddly_named_and_other_databases_are_ignored():
    odd_local = [
        LocalFile("loyalty_20261001_000000.dump.gz.bak", 1, NOW - timedelta(days=90)),
        LocalFile("notes.txt", 1, NOW - timedelta(days=90)),
        LocalFile(".loyalty_20261001_000000.dump.gz.partial-123", 1, NOW - timedelta(days=90)),
        LocalFile("loyalty_archive_20261001_000000.dump.gz", 1, NOW - timedelta(days=90)),
        LocalFile("other_20261001_000000.dump.gz", 1, NOW - timedelta(days=90)),
        LocalFile("loyalty_20261301_000000.dump.gz", 1, NOW - timedelta(days=90)),  # month 13
        LocalFile("LOYALTY_20261001_000000.dump.gz", 1, NOW - timedelta(days=90)),
    ]
    old = nightly(90)
    odd_remote = [
        RemoteObject("backups/" + old.filename, 1, NOW),  # flat layout, not ours
        RemoteObject("backups/2026/01/01/" + old.filename, 1, NOW),  # wrong date path
        RemoteObject("other-prefix/" + old.s3_key(""), 1, NOW),
        RemoteObject(nightly(90, db="other").s3_key(PREFIX), 1, NOW),
        RemoteObject("backups/2026/08/29/readme.txt", 1, NOW),
    ]
    inv, ev = world(range(0, 40), extra_local=odd_local, extra_remote=odd_remote)
    plan = plan_retention(inv, ev, RetentionPolicy(), NOW)
    touched = {i.name for i in plan.items}
    for f in odd_local:
        assert f.name not in touched
    for o in odd_remote:
        assert o.key not in touched
    assert len(plan.ignored_local) == len(odd_local)
    assert len(plan.ignored_remote) == len(odd_remote)


def test_classifiers():
    name = nightly(3)
    assert classify_local(name.filename, DB)[0] == name
    assert classify_local(name.filename + ".sha256", DB)[1] == ".sha256"
    assert classify_local(name.filename, "other")[0] is None
    assert classify_key(name.s3_key("backups"), "backups/", DB)[0] == name
    assert classify_key(name.s3_key("backups2"), "backups/", DB)[0] is None


def test_multipart_uploads_and_logs():
    inv, ev = world(range(0, 3))
    uploads = (
        MultipartUpload(nightly(2).s3_key(PREFIX), "old-upload", NOW - timedelta(days=2)),
        MultipartUpload(nightly(0).s3_key(PREFIX), "fresh-upload", NOW - timedelta(hours=2)),
        MultipartUpload("backups/unrelated.bin", "other-upload", NOW - timedelta(days=9)),
    )
    logs = (
        LogFile("backup.log", 10, NOW - timedelta(days=31)),
        LogFile("nested/db-maintenance-1.log", 10, NOW - timedelta(days=45)),
        LogFile("backup-new.log", 10, NOW - timedelta(days=3)),
        LogFile("backup.log.gz", 10, NOW - timedelta(days=90)),
    )
    inv = Inventory(DB, inv.local, inv.remote, PREFIX, multipart=uploads, logs=logs)
    plan = plan_retention(inv, ev, RetentionPolicy(), NOW)
    mp = {i.upload_id: i.action for i in plan.items if i.kind == "multipart"}
    assert mp == {"old-upload": DELETE, "fresh-upload": KEEP}
    lg = {i.name: i.action for i in plan.items if i.kind == "log"}
    assert lg == {"backup.log": DELETE, "nested/db-maintenance-1.log": DELETE, "backup-new.log": KEEP}


def test_restrict_to_only_deletes_what_both_plans_delete():
    inv, ev = world(range(0, 40))
    shown = plan_retention(inv, ev, RetentionPolicy(), NOW)
    later = plan_retention(inv, ev, RetentionPolicy(), NOW + timedelta(days=2))
    assert len(later.deletions) > len(shown.deletions)
    merged = restrict_to(later, shown)
    assert set(merged.fingerprint()) == set(shown.fingerprint()) & set(later.fingerprint())


def test_invalid_policy_names_the_field():
    inv, ev = world(range(0, 3))
    with pytest.raises(PolicyError, match="min_keep"):
        plan_retention(inv, ev, RetentionPolicy(min_keep=0), NOW)
    with pytest.raises(PolicyError, match="keep_days"):
        plan_retention(inv, ev, RetentionPolicy(keep_days=-1), NOW)


# ---------------------------------------------------------------- properties

odd_names = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-0123456789/", min_size=1, max_size=40),
    st.sampled_from(
        [
            "loyalty_20261001_000000.dump",
            "loyalty_20261001_000000.dump.gz.tmp",
            "other_20261001_000000.dump.gz",
            "loyalty_x_20261001_000000.dump.zst",
            "loyalty_20261001_000000.sql.gz",
        ]
    ),
)


@st.composite
def worlds(draw):
    n = draw(st.integers(min_value=0, max_value=25))
    hours = draw(st.lists(st.integers(min_value=0, max_value=400 * 24), min_size=n, max_size=n, unique=True))
    ages = [h / 24 for h in hours]
    local, remote, integrity, drills = [], [], {}, {}
    for age in ages:
        name = backup_name(DB, NOW - timedelta(days=age), draw(st.sampled_from(["gzip", "zstd"])))
        size = draw(st.integers(min_value=1, max_value=10_000))
        if draw(st.booleans()):
            local.append(LocalFile(name.filename, size, name.taken_at))
            if draw(st.booleans()):
                local.append(LocalFile(name.filename + ".sha256", 64, name.taken_at))
        if draw(st.booleans()):
            remote_size = size if draw(st.integers(0, 4)) else size + 1
            remote.append(RemoteObject(name.s3_key(PREFIX), remote_size, name.taken_at))
            if draw(st.integers(0, 4)):
                remote.append(RemoteObject(name.s3_key(PREFIX) + ".sha256", 64, name.taken_at))
        verdict = draw(st.sampled_from(["ok", "ok", "ok", "bad", "unknown"]))
        if verdict != "unknown":
            integrity[name.filename] = IntegrityResult(verdict == "ok")
        drill = draw(st.sampled_from([None, None, True, False]))
        if drill is not None:
            drills[name.filename] = drill
    for odd in draw(st.lists(odd_names, max_size=5)):
        local.append(LocalFile(odd.replace("/", "_"), 7, NOW - timedelta(days=500)))
        remote.append(RemoteObject(PREFIX + odd, 7, NOW - timedelta(days=500)))
    offsite = draw(st.booleans())
    policy = RetentionPolicy(
        keep_days=draw(st.sampled_from([0, 1, 7, 30])),
        min_keep=draw(st.integers(min_value=1, max_value=5)),
        gfs_daily=draw(st.integers(0, 3)),
        gfs_weekly=draw(st.integers(0, 3)),
        gfs_monthly=draw(st.integers(0, 3)),
        max_backup_age_hours=draw(st.sampled_from([0, 48])),
    )
    inv = Inventory(DB, tuple(local), tuple(remote) if offsite else None, PREFIX)
    return inv, Evidence(integrity=integrity, drills=drills), policy


def _verified(ev: Evidence, filename: str) -> bool:
    r = ev.integrity.get(filename)
    return r is not None and r.passed and ev.drills.get(filename) is not False


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_property_floor_always_holds(w):
    inv, ev, policy = w
    plan = plan_retention(inv, ev, policy, NOW)
    existing = {}
    for f in inv.local:
        parsed = classify_local(f.name, DB)
        if parsed[0] is not None and parsed[1] is None:
            existing[parsed[0].filename] = parsed[0]
    for o in inv.remote or ():
        parsed = classify_key(o.key, PREFIX, DB)
        if parsed[0] is not None and parsed[1] is None:
            existing[parsed[0].filename] = parsed[0]
    floor = sorted((n for n in existing.values() if _verified(ev, n.filename)), key=lambda n: (n.taken_at, n.filename), reverse=True)
    floor_names = {n.filename for n in floor[: policy.min_keep]}
    for item in plan.deletions:
        assert item.backup not in floor_names, item
    # A local backup is deleted only with a same-size S3 copy and its .sha256 sidecar when offsite is configured.
    if inv.offsite_configured:
        remote_sizes = {o.key: o.size for o in inv.remote}
        for item in plan.deletions_at("local"):
            if item.kind == "backup":
                name = classify_local(item.name, DB)[0]
                assert remote_sizes.get(name.s3_key(PREFIX)) == item.size
                assert name.s3_key(PREFIX) + ".sha256" in remote_sizes
    # Every floor copy is listed for re-verification.
    listed = {(r.location, r.filename) for r in plan.to_reverify if r.purpose == "floor"}
    for n in floor_names:
        if any(f.name == n for f in inv.local):
            assert ("local", n) in listed
    if plan.blocked:
        assert plan.deletions == ()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_property_nothing_outside_the_pattern_is_touched(w):
    inv, ev, policy = w
    plan = plan_retention(inv, ev, policy, NOW)
    for item in plan.items:
        if item.location == "local":
            assert classify_local(item.name, DB)[0] is not None
        elif item.location == "s3":
            assert classify_key(item.name, PREFIX, DB)[0] is not None
    in_scope_local = {f.name for f in inv.local if classify_local(f.name, DB)[0] is not None}
    assert {i.name for i in plan.items if i.location == "local"} == in_scope_local


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), st.randoms(use_true_random=False))
def test_property_planning_twice_gives_the_same_plan(w, rnd):
    inv, ev, policy = w
    first = plan_retention(inv, ev, policy, NOW)
    local, remote = list(inv.local), list(inv.remote) if inv.remote is not None else None
    rnd.shuffle(local)
    if remote is not None:
        rnd.shuffle(remote)
    shuffled = Inventory(DB, tuple(local), tuple(remote) if remote is not None else None, PREFIX)
    second = plan_retention(shuffled, ev, policy, NOW)
    assert first == second
    assert first.markdown() == second.markdown()


stamp_like = st.builds(
    lambda db, digits, sep, suffix: f"{db}_{digits[:8]}{sep}{digits[8:]}{suffix}",
    st.sampled_from(["loyalty", "other", "loyalty_x", "a-b", ""]),
    st.text(alphabet="0123456789", min_size=14, max_size=14),
    st.sampled_from(["_", "-"]),
    st.sampled_from([".dump.gz", ".dump.zst", ".dump", ".dump.gz.sha256"]),
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(stamp_like, st.builds(lambda d: backup_name(DB, d).filename, st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(timezone.utc)))))
def test_property_retention_scope_is_exactly_the_one_strict_parser(filename):
    """Retention has no parser of its own: a name is in scope exactly when parse_backup_name accepts it
    (month 13 and other impossible stamps are left alone), and its S3 key exactly when parse_backup_key does."""
    from loyalty_ops.lib.backup.naming import parse_backup_key, parse_backup_name

    from loyalty_ops.lib.retention.classify import split_sidecar

    base, suffix = split_sidecar(filename)
    reference = parse_backup_name(base)
    db = reference.database if reference is not None else DB
    assert classify_local(filename, db)[:2] == ((reference, suffix) if reference is not None else (None, None))
    if reference is not None:
        assert reference.filename == base
        for prefix in ("backups/", "", "a/b"):
            key = reference.s3_key(prefix)
            assert classify_key(key, prefix, reference.database)[0] == reference == parse_backup_key(key, prefix)


_dates = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(timezone.utc))


@settings(max_examples=200, deadline=None)
@given(_dates, _dates, st.booleans(), st.sampled_from(["backups/", "", "a/b", "/x/"]), st.sampled_from(["", "/", "x/"]))
def test_property_s3_scope_equals_parse_backup_key(taken, other, same_day, prefix, junk):
    """An S3 key is a backup exactly when parse_backup_key says so: right prefix, the file's own date path."""
    from loyalty_ops.lib.backup.naming import normalize_prefix, parse_backup_key

    name = backup_name(DB, taken)
    day = name.taken_at if same_day else other
    key = f"{normalize_prefix(prefix)}{junk}{day:%Y/%m/%d}/{name.filename}"
    assert classify_key(key, prefix, DB)[0] == parse_backup_key(key, prefix)
    assert classify_key(key + ".sha256", prefix, DB)[0] == parse_backup_key(key, prefix)

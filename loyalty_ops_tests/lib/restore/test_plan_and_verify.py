"""Pure restore logic: request validation, the plan, drill frequency, comparison with the manifest."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from loyalty_ops.lib.restore.plan import (
    MAX_IDENTIFIER_BYTES,
    BackupRef,
    RestoreConfigError,
    drill_database_name,
    drill_database_time,
    drill_due,
    parse_backup_ref,
    parse_drill_every,
    plan_steps,
    side_database_name,
    validate_request,
)
from loyalty_ops.lib.restore.history import build_history
from loyalty_ops.lib.restore.verify import compare_with_manifest, row_count_table

NAME = "loyalty_20261127_020000.dump.gz"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("latest", BackupRef("latest")),
        (" LATEST ", BackupRef("latest")),
        (NAME, BackupRef("file", NAME)),
        (f"/var/backups/{NAME}", BackupRef("file", f"/var/backups/{NAME}")),
        (f"backups/2026/11/27/{NAME}", BackupRef("s3_key", f"backups/2026/11/27/{NAME}")),
        (f"s3://bucket/backups/2026/11/27/{NAME}", BackupRef("s3_key", f"backups/2026/11/27/{NAME}")),
        ("loyalty_20261127_020000.dump.zst", BackupRef("file", "loyalty_20261127_020000.dump.zst")),
    ],
)
def test_backup_reference_forms(text, expected):
    assert parse_backup_ref(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "dump.sql", "s3://bucket", "backups/other.tar", f"{NAME}.sha256"])
def test_bad_backup_references_are_refused(text):
    with pytest.raises(RestoreConfigError, match="backup"):
        parse_backup_ref(text)


def test_valid_requests():
    req = validate_request(backup="latest", target_database="loyalty_copy")
    assert req.mode == "new_database" and req.jobs == 2 and not req.replace
    req = validate_request(backup=NAME, target_database="loyalty", mode="replace", confirm="loyalty", jobs=4)
    assert req.replace and req.jobs == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="replace"), "set confirm to 'loyalty'"),
        (dict(mode="replace", confirm="Loyalty"), "does not equal target_database"),
        (dict(mode="replace", confirm="loyalty "), "does not equal target_database"),
        (dict(confirm="other"), "leave confirm empty"),
        (dict(mode="overwrite"), "mode must be one of new_database, replace"),
        (dict(jobs=0), "jobs must be"),
        (dict(jobs=17), "jobs must be"),
        (dict(target_database=""), "target_database is empty"),
        (dict(target_database="template1"), "system database"),
        (dict(target_database="postgres"), "system database"),
        (dict(target_database='x"; DROP DATABASE loyalty; --'), "may contain only"),
        (dict(target_database="1abc"), "must start with"),
        (dict(target_database="a" * (MAX_IDENTIFIER_BYTES + 1)), "63-byte"),
        (dict(target_database="loyalty_drill_20261127_020000"), "restore drills drop"),
    ],
)
def test_request_mistakes_name_the_field(kwargs, match):
    args = dict(backup="latest", target_database="loyalty", mode="new_database", confirm=None, jobs=2)
    args.update(kwargs)
    with pytest.raises(RestoreConfigError, match=match):
        validate_request(**args)


def test_replace_refusal_says_nothing_changed():
    with pytest.raises(RestoreConfigError, match="Nothing was changed"):
        validate_request(backup="latest", target_database="loyalty", mode="replace", confirm="")


def test_plan_lists_safety_backup_and_swap_only_for_replace():
    replace = plan_steps(validate_request(backup=NAME, target_database="loyalty", mode="replace", confirm="loyalty"))
    new = plan_steps(validate_request(backup=NAME, target_database="copy"))
    assert any("safety backup" in s for s in replace) and not any("safety backup" in s for s in new)
    assert any("terminate" in s for s in replace) and not any("terminate" in s for s in new)
    assert replace.index(next(s for s in replace if "SHA-256" in s)) < replace.index(next(s for s in replace if "safety" in s))
    assert "fit on their disks" in new[1] and "temporary file" in new[3]
    streamed = plan_steps(validate_request(backup=NAME, target_database="copy", jobs=1))
    assert any("streamed into pg_restore" in s for s in streamed) and not any("private temporary file" in s for s in streamed)


def test_database_names():
    now = datetime(2026, 11, 27, 2, 0, 5, tzinfo=timezone.utc)
    assert drill_database_name(now, "0a1b2c3d") == "loyalty_drill_20261127_020005_0a1b2c3d"
    assert drill_database_time("loyalty_drill_20261127_020005_0a1b2c3d") == now
    assert drill_database_time("loyalty_drill_20261127_020005") == now  # named by an older version
    assert drill_database_time("loyalty_drill_manual") is None
    long = side_database_name("x" * 63, now)
    assert len(long) <= 63 and long.endswith("_restore_20261127_020005")


@pytest.mark.parametrize(
    "every, since, due",
    [(1, None, True), (1, 1, True), (7, None, True), (7, 3, False), (7, 7, True), (7, 9, True), (0, None, False), (0, 5, False)],
)
def test_drill_due(every, since, due):
    assert drill_due(every, since)[0] is due


def test_drill_every_from_environment():
    assert parse_drill_every(None) == 1 and parse_drill_every("") == 1
    assert parse_drill_every("7") == 7
    assert parse_drill_every("0") == 0
    with pytest.raises(RestoreConfigError, match="LOYALTY_DRILL_EVERY_N_BACKUPS must be a whole number"):
        parse_drill_every("weekly")


def test_comparison_exact_and_named():
    expected_rows = {"public.events": 100, "public.members": 10, "public.gone": 1}
    actual_rows = {"public.events": 99, "public.members": 10, "public.extra": 0}
    expected_cat = {"tables": 3, "indexes": 5, "views": 1}
    actual_cat = {"tables": 3, "indexes": 4, "views": 1}
    result = compare_with_manifest(expected_rows, expected_cat, actual_rows, actual_cat)
    assert not result.passed
    messages = [m.message() for m in result.mismatches]
    assert "table public.events: 99 rows restored, 100 at dump time (-1)" in messages
    assert any(m.startswith("table public.gone: missing") for m in messages)
    assert any(m.startswith("table public.extra: restored but not in the manifest") for m in messages)
    assert "catalog indexes: 4 indexes restored, 5 at dump time" in messages
    assert "4 difference(s)" in result.summary()
    same = compare_with_manifest(expected_rows, expected_cat, dict(expected_rows), dict(expected_cat))
    assert same.passed and "111 rows match" in same.summary()
    assert "MISMATCH" in row_count_table(expected_rows, actual_rows)


def test_two_drills_in_the_same_second_get_different_scratch_databases():
    now = datetime(2026, 11, 27, 2, 0, 5, tzinfo=timezone.utc)
    names = {drill_database_name(now) for _ in range(50)}
    assert len(names) == 50 and all(drill_database_time(n) == now for n in names)
    assert all(len(n) <= MAX_IDENTIFIER_BYTES for n in names)


@pytest.mark.parametrize(
    "name", ["loyalty_drill_20251301_000000", "loyalty_drill_20251301_000000_0a1b2c3d", "loyalty_drill_20260230_250000"]
)
def test_a_drill_name_with_an_impossible_timestamp_is_left_alone(name):
    assert drill_database_time(name) is None


def test_the_documented_rollback_undo_names_the_safety_backup_not_an_s3_key():
    ref = parse_backup_ref("safety/loyalty_20261127_020000.dump.gz")
    assert ref == BackupRef("file", "safety/loyalty_20261127_020000.dump.gz") and ref.is_safety
    assert ref.filename == "loyalty_20261127_020000.dump.gz"
    # Deeper paths are still S3 keys, and a key under a prefix is never a safety backup.
    assert parse_backup_ref("backups/2026/11/27/loyalty_20261127_020000.dump.gz").kind == "s3_key"
    assert not parse_backup_ref("loyalty_20261127_020000.dump.gz").is_safety


def test_materialized_views_are_compared_populated_or_not_and_by_rows():
    rows, catalog = {"public.t": 3}, {"views": 2}
    at_dump = {"public.mv_full": {"populated": True, "rows": 3}, "public.mv_empty": {"populated": False, "rows": None}}
    same = compare_with_manifest(rows, catalog, rows, catalog, at_dump, {k: dict(v) for k, v in at_dump.items()})
    assert same.passed and same.matviews_compared == 2 and "2 materialized view(s)" in same.summary()
    wrong = {"public.mv_full": {"populated": True, "rows": 2}, "public.mv_empty": {"populated": True, "rows": 0}}
    result = compare_with_manifest(rows, catalog, rows, catalog, at_dump, wrong)
    text = result.summary()
    assert not result.passed and len(result.mismatches) == 2
    assert "materialized view public.mv_full: populated with 2 rows after restore, populated with 3 rows at dump time" in text
    assert "materialized view public.mv_empty: populated with 0 rows after restore, not populated at dump time" in text
    missing = compare_with_manifest(rows, catalog, rows, catalog, at_dump, {"public.mv_full": at_dump["public.mv_full"]})
    assert [m.what for m in missing.mismatches] == ["materialized view public.mv_empty"]
    # A manifest from before views were recorded: nothing to compare them with.
    assert compare_with_manifest(rows, catalog, rows, catalog, None, wrong).passed


def test_latest_skips_what_history_says_failed():
    checks_ok = {name: True for name in ("a", "b", "c", "d")}
    history = build_history(
        [
            ("loyalty_20261202_020000.dump.gz", {**checks_ok, "backup_size_plausible": False}),
            ("loyalty_20261201_020000.dump.gz", checks_ok),
            ("loyalty_20261130_020000.dump.gz", checks_ok),
            ("loyalty_20261129_020000.dump.gz", {**checks_ok, "d": None}),
        ],
        [
            ("loyalty_20261130_020000.dump.gz", False, "drill failed at step 'pg_restore': boom"),
            ("loyalty_20261201_020000.dump.gz", True, "ok"),
            ("loyalty_20261130_020000.dump.gz", True, "an older, passed drill of the same file"),
        ],
    )
    newest = history.verdict("loyalty_20261202_020000.dump.gz")
    assert not newest.passed and "backup_size_plausible failed" in newest.reason
    good = history.verdict("loyalty_20261201_020000.dump.gz")
    assert good.passed and "restore drill" in good.reason
    drilled_bad = history.verdict("loyalty_20261130_020000.dump.gz")  # the newest drill of it counts
    assert not drilled_bad.passed and "restore drill failed" in drilled_bad.reason and "boom" in drilled_bad.reason
    unchecked = history.verdict("loyalty_20261129_020000.dump.gz")
    assert not unchecked.passed and "never ran" in unchecked.reason
    assert history.verdict("loyalty_20261128_020000.dump.gz") is None and not history.empty
    assert build_history([], []).empty

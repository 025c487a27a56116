"""The planning rules, the B-tree bloat estimate, name resolution and the markdown plan: pure functions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from loyalty_ops.lib.maintenance.manual import UnknownTargetError, manual_plan, parse_qualified_name, resolve_names
from loyalty_ops.lib.maintenance.plan import (
    IndexStats,
    TableStats,
    Thresholds,
    estimate_btree_bloat,
    plan_markdown,
    plan_maintenance,
)

NOW = datetime(2026, 11, 29, 1, 0, tzinfo=timezone.utc)
RECENT = NOW - timedelta(hours=3)


def table(name="t", live=100_000, dead=0, mods=0, last_vacuum=RECENT, last_analyze=RECENT, schema="public", oid=1):
    return TableStats(oid, schema, name, live, dead, mods, last_vacuum, last_analyze, est_bytes=8192 * 100)


def index(name="t_pkey", relpages=1000, reltuples=200_000.0, live=None, valid=True, am="btree", with_stats=1, oid=10):
    return IndexStats(
        oid=oid, schema="public", table="t", name=name, access_method=am, valid=valid, relpages=relpages,
        reltuples=reltuples, columns=1, columns_with_stats=with_stats, data_width=4.0, table_live_tuples=live,
    )


def rules_for(t: TableStats, thresholds: Thresholds = Thresholds()) -> list[str]:
    plan = plan_maintenance([t], [], thresholds, NOW)
    return plan.items[0].rules if plan.items else []


def test_each_table_rule_fires_on_its_own():
    assert rules_for(table(dead=0)) == []
    assert rules_for(table(live=90_000, dead=10_000)) == ["dead_ratio"]
    assert rules_for(table(live=10_000_000, dead=150_000)) == ["dead_tuples"]
    assert rules_for(table(live=100_000, mods=20_000)) == ["modified_since_analyze"]
    week_ago = NOW - timedelta(days=8)
    assert rules_for(table(mods=10, last_vacuum=week_ago, last_analyze=week_ago)) == ["stale_maintenance"]
    assert rules_for(table(mods=10, last_vacuum=None, last_analyze=None)) == ["never_maintained"]


def test_idle_and_tiny_tables_are_left_alone():
    # Unchanged for months: nothing to vacuum, the age rule needs a change.
    old = NOW - timedelta(days=90)
    assert rules_for(table(last_vacuum=old, last_analyze=old)) == []
    # 50% dead of a 20-row table is below min_dead_tuples.
    assert rules_for(table(live=10, dead=10, mods=10)) == []
    # A never-analyzed empty table.
    assert rules_for(table(live=0, last_vacuum=None, last_analyze=None)) == []


def test_thresholds_are_configurable_and_validated():
    t = table(live=95_000, dead=5_000)
    assert rules_for(t) == []
    assert rules_for(t, Thresholds(dead_ratio=0.05)) == ["dead_ratio"]
    with pytest.raises(ValueError, match="dead_ratio"):
        plan_maintenance([t], [], Thresholds(dead_ratio=5), NOW)
    with pytest.raises(ValueError, match="max_days_since_maintenance"):
        Thresholds(max_days_since_maintenance=0).validate()


def test_btree_bloat_estimate():
    # 200k int4 entries need ~550 pages at fillfactor 90: a 550-page index is tight, 1000 pages ~45% bloat.
    tight = estimate_btree_bloat(index(relpages=550))
    assert tight is not None and tight.bloat_ratio < 0.02
    loose = estimate_btree_bloat(index(relpages=1000))
    assert loose is not None and 0.4 < loose.bloat_ratio < 0.5
    # Deleted rows not yet vacuumed: the table's live count wins over the stale reltuples.
    after_delete = estimate_btree_bloat(index(relpages=550, live=20_000))
    assert after_delete is not None and after_delete.bloat_ratio > 0.85
    # Cannot estimate: not a B-tree, no statistics, never analyzed.
    assert estimate_btree_bloat(index(am="gin")) is None
    assert estimate_btree_bloat(index(with_stats=0)) is None
    assert estimate_btree_bloat(index(reltuples=-1)) is None


def test_index_rules_bloat_invalid_and_leftovers():
    indexes = [
        index("t_pkey", relpages=550, oid=1),  # tight
        index("t_fat_idx", relpages=2000, oid=2),
        index("t_small_idx", relpages=100, reltuples=1000, oid=3),  # bloated but tiny (< 1 MB wasted)
        index("t_broken_idx", valid=False, oid=4),
        index("t_pkey_ccnew", valid=False, oid=5),
        index("t_pkey_ccold1", valid=False, oid=6),
        index("valid_ccnew", valid=True, oid=7, relpages=550),  # valid: just a name, not a leftover
    ]
    plan = plan_maintenance([], indexes, Thresholds(), NOW)
    assert [(i.name, i.action, i.rules) for i in plan.items] == [
        ("t_pkey_ccnew", "drop", ["leftover"]),
        ("t_pkey_ccold1", "drop", ["leftover"]),
        ("t_broken_idx", "reindex", ["invalid"]),
        ("t_fat_idx", "reindex", ["index_bloat"]),
    ]
    assert [i.name for i in plan.drops] == ["t_pkey_ccnew", "t_pkey_ccold1"]


def test_parse_qualified_name():
    assert parse_qualified_name("public.events") == ["public", "events"]
    assert parse_qualified_name("Public.Events") == ["public", "events"]
    assert parse_qualified_name('"My Schema"."Mixed ""Q"" Case"') == ["My Schema", 'Mixed "Q" Case']
    assert parse_qualified_name('"a.b"') == ["a.b"]
    with pytest.raises(ValueError):
        parse_qualified_name('"open')


def test_resolve_names_exact_bare_quoted_and_errors():
    available = [("public", "events"), ("public", "Mixed Case"), ("odd schema", "events"), ("odd schema", "x.y")]
    assert resolve_names(["public.events"], available, "table") == [("public", "events")]
    assert resolve_names(["Mixed Case"], available, "table") == [("public", "Mixed Case")]
    assert resolve_names(['"odd schema"."x.y"', "odd schema.x.y"], available, "table") == [("odd schema", "x.y")]
    with pytest.raises(UnknownTargetError, match="ambiguous"):
        resolve_names(["events"], available, "table")
    with pytest.raises(UnknownTargetError, match=r"'public\.event' does not exist.*did you mean 'public\.events'"):
        resolve_names(["public.event"], available, "table")


def test_manual_plan_fails_on_unknown_names_listing_all():
    with pytest.raises(UnknownTargetError) as exc:
        manual_plan([table("events")], [index("events_pkey")], ["public.nope", "events"], ["public.missing_idx"])
    message = str(exc.value)
    assert "'public.nope'" in message and "'public.missing_idx'" in message and "nothing was changed" in message


def test_plan_markdown_names_rules_and_escapes_identifiers():
    odd = table('we|ird `name`', live=1000, dead=9000)
    plan = plan_maintenance([odd, table("calm", oid=2)], [], Thresholds(), NOW)
    md = plan_markdown(plan)
    assert "1 of 2 tables" in md
    assert "dead_ratio: 90% dead (9,000 tuples) >= 10%" in md
    assert "we\\|ird 'name'" in md and "calm" not in md.split("\n", 2)[2]
    assert "Nothing is over a threshold" in plan_markdown(plan_maintenance([table("calm")], [], Thresholds(), NOW))

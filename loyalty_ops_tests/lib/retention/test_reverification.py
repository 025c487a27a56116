"""Re-verification of what retention relies on: real files re-hashed on disk, and the pure gate that
turns the results into BLOCKED / local copy kept."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from loyalty_ops.lib.backup.naming import backup_name
from loyalty_ops.lib.retention.gates import apply_reverification
from loyalty_ops.lib.retention.plan import (
    DELETE,
    KEEP,
    Evidence,
    IntegrityResult,
    Inventory,
    LocalFile,
    Recorded,
    RemoteObject,
    RetentionPolicy,
    Reverification,
    ReverifyRequest,
    plan_retention,
)
from loyalty_ops.lib.retention.reverify import rehash_local
from loyalty_ops.lib.retention.types import INCOMPLETE, MATCHES, MISMATCH

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=timezone.utc)
DB = "loyalty"
PREFIX = "backups/"


def _request(path, sidecar=True, recorded=None):
    return ReverifyRequest("local", path.name, path.name, path.stat().st_size if path.exists() else 0, "floor",
                           sidecar=path.name + ".sha256" if sidecar else None, recorded=recorded or Recorded())


def test_rehash_finds_flipped_and_missing_bytes_and_a_sidecar_that_disagrees_with_history(tmp_path):
    body = b"PGDMP" + bytes(range(256)) * 100
    digest = hashlib.sha256(body).hexdigest()
    path = tmp_path / "loyalty_20261126_020000.dump.gz"
    path.write_bytes(body)
    (tmp_path / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")
    recorded = Recorded(sha256=digest, bytes=len(body))
    assert rehash_local(tmp_path, _request(path, recorded=recorded)).outcome == MATCHES

    path.write_bytes(body[:-1])
    result = rehash_local(tmp_path, _request(path, recorded=recorded))
    assert result.outcome == MISMATCH and f"expected sha256 {digest}" in result.detail
    assert f"{len(body) - 1:,} bytes on disk, {len(body):,} recorded" in result.detail

    path.write_bytes(body)
    other = hashlib.sha256(b"other").hexdigest()
    result = rehash_local(tmp_path, _request(path, recorded=Recorded(sha256=other)))
    assert result.outcome == MISMATCH and "backup history recorded" in result.detail

    assert rehash_local(tmp_path, _request(path, sidecar=False)).outcome == INCOMPLETE  # nothing to compare with
    path.unlink()
    assert "gone" in rehash_local(tmp_path, _request(path, recorded=recorded)).detail


def _world(days, remote=True):
    local, objects = [], []
    for d in days:
        name = backup_name(DB, NOW - timedelta(days=d))
        local += [LocalFile(name.filename, 100, NOW), LocalFile(name.filename + ".sha256", 90, NOW)]
        if remote:
            key = name.s3_key(PREFIX)
            objects += [RemoteObject(key, 100, NOW), RemoteObject(key + ".sha256", 90, NOW)]
    integrity = {backup_name(DB, NOW - timedelta(days=d)).filename: IntegrityResult(True) for d in days}
    return Inventory(DB, tuple(local), tuple(objects) if remote else None, PREFIX), Evidence(integrity=integrity)


def _all_match(plan):
    return {(r.location, r.filename): Reverification(MATCHES, "") for r in plan.to_reverify}


def test_floor_and_offsite_requests_and_the_gate():
    inv, ev = _world(range(0, 12))
    plan = plan_retention(inv, ev, RetentionPolicy(keep_days=7, min_keep=3), NOW)
    floor = [r for r in plan.to_reverify if r.purpose == "floor"]
    assert {(r.location, r.filename) for r in floor} == {
        (loc, backup_name(DB, NOW - timedelta(days=d)).filename) for d in range(3) for loc in ("local", "s3")
    }
    offsite = {r.filename for r in plan.to_reverify if r.purpose == "offsite"}
    assert offsite == {backup_name(DB, NOW - timedelta(days=d)).filename for d in range(7, 12)}

    ok = apply_reverification(plan, _all_match(plan))
    assert ok.reverified and not ok.blocked and ok.fingerprint() == plan.fingerprint()

    newest = backup_name(DB, NOW).filename
    results = _all_match(plan)
    # An S3 copy of a floor backup that is also on disk and merely unconfirmed: reported, not blocking.
    results[("s3", newest)] = Reverification(INCOMPLETE, "its .sha256 sidecar is missing on S3")
    assert not apply_reverification(plan, results).blocked
    # The local file does not match: BLOCKED, nothing deleted, the backup counts as not verified.
    results[("local", newest)] = Reverification(MISMATCH, "expected sha256 aa, found bb")
    blocked = apply_reverification(plan, results)
    assert blocked.blocked and newest in blocked.blocked and "expected sha256 aa, found bb" in blocked.blocked
    assert blocked.deletions == () and not next(d for d in blocked.backups if d.filename == newest).verified
    # A result missing for a floor copy blocks too.
    del results[("local", newest)]
    assert "was not re-verified" in apply_reverification(plan, results).blocked

    # An offsite copy that does not check out keeps the local file (the S3 copy still goes by policy).
    victim = backup_name(DB, NOW - timedelta(days=9)).filename
    results = _all_match(plan)
    results[("s3", victim)] = Reverification(MISMATCH, "size 5 bytes, expected 100")
    vetoed = apply_reverification(plan, results)
    actions = {(i.location, i.kind, i.backup): (i.action, i.reason) for i in vetoed.items}
    assert actions[("local", "backup", victim)][0] == KEEP and "size 5 bytes" in actions[("local", "backup", victim)][1]
    assert actions[("local", "sidecar", victim)][0] == KEEP
    assert actions[("s3", "backup", victim)][0] == DELETE


def test_a_floor_backup_only_on_s3_must_be_confirmed():
    inv, ev = _world(range(0, 5))
    # The two newest exist only on S3 (their local files were removed by hand).
    gone = {backup_name(DB, NOW - timedelta(days=d)).filename for d in (0, 1)}
    inv = Inventory(DB, tuple(f for f in inv.local if not any(f.name.startswith(g) for g in gone)), inv.remote, PREFIX)
    plan = plan_retention(inv, ev, RetentionPolicy(keep_days=0, min_keep=3), NOW)
    results = _all_match(plan)
    newest = backup_name(DB, NOW).filename
    results[("s3", newest)] = Reverification(INCOMPLETE, "its .sha256 sidecar is missing on S3")
    blocked = apply_reverification(plan, results)
    assert blocked.blocked and newest in blocked.blocked and blocked.deletions == ()

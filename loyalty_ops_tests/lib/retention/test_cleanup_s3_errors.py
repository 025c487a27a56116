"""Carrying out a plan when S3 fails in the middle, on real files and a real moto S3 server: a bucket
policy that denies some deletes (per-key errors in the DeleteObjects response), and a server that is
stopped between two DeleteObjects batches. In both, no local backup is deleted unless its offsite status
is confirmed after the S3 step."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from botocore.config import Config

from devstack.s3_endpoint import LocalS3
from loyalty_ops.lib.backup.naming import backup_name
from loyalty_ops.lib.retention.cleanup import carry_out
from loyalty_ops.lib.retention.gates import plan_with_reverification
from loyalty_ops.lib.retention.reverify import reverify
from loyalty_ops.lib.backup.inventory import list_objects, scan_backup_dir
from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.retention.plan import Evidence, IntegrityResult, Inventory, RetentionPolicy, plan_retention

DB = "loyalty"
PREFIX = "backups/"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def fast_client(server: LocalS3):
    """No retries and short timeouts: a stopped server fails the request at once."""
    return server.client(Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=5))


def make_backups(backup_dir: Path, client, bucket: str, days) -> dict:
    names = {}
    for d in days:
        name = backup_name(DB, NOW - timedelta(days=d, minutes=1))
        body = os.urandom(512)
        (backup_dir / name.filename).write_bytes(body)
        digest = hashlib.sha256(body).hexdigest()
        (backup_dir / (name.filename + ".sha256")).write_text(digest)
        client.put_object(Bucket=bucket, Key=name.s3_key(PREFIX), Body=body, Metadata={"sha256": digest})
        client.put_object(Bucket=bucket, Key=name.s3_key(PREFIX) + ".sha256", Body=digest.encode())
        names[d] = name
    return names


def make_plan(backup_dir: Path, client, bucket: str, names: dict):
    inventory = Inventory(DB, scan_backup_dir(backup_dir), list_objects(client, BackupLocation(backup_dir, bucket, PREFIX)), PREFIX)
    evidence = Evidence(integrity={n.filename: IntegrityResult(True) for n in names.values()})
    return plan_with_reverification(
        inventory, evidence, RetentionPolicy(keep_days=5, min_keep=3), NOW, timezone.utc,
        lambda requests: reverify(requests, location=BackupLocation(backup_dir, bucket, PREFIX), client=client),
    )


def assert_no_local_backup_lost(deleted_local: set[str], names: dict, client, bucket: str, s3_deleted: set[str]):
    """Every local backup that is gone was retired from S3 by this run or still has its S3 copy."""
    for name in names.values():
        if name.filename in deleted_local:
            key = name.s3_key(PREFIX)
            still_there = any(o.key == key for o in list_objects(client, BackupLocation(Path("unused"), bucket, PREFIX)))
            assert key in s3_deleted or still_there, name.filename


def test_bucket_policy_denying_some_deletes(tmp_path, s3_server):
    client = fast_client(s3_server)
    bucket = f"loyalty-ret-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    names = make_backups(backup_dir, client, bucket, range(0, 14))
    plan = make_plan(backup_dir, client, bucket, names)
    assert {i.backup for i in plan.deletions_at("local")} == {names[d].filename for d in range(5, 14)}

    # S3 refuses to delete two backups but still serves them; for two more it refuses deletes and reads.
    refuse_delete = [names[d].s3_key(PREFIX) for d in (6, 7)]
    refuse_all = [names[d].s3_key(PREFIX) for d in (8, 9)]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
             "Resource": [f"arn:aws:s3:::{bucket}/{k}" for k in refuse_delete + refuse_all]},
            # s3:* rather than s3:GetObject: moto does not map HeadObject to s3:GetObject as AWS does.
            {"Effect": "Deny", "Principal": "*", "Action": "s3:*",
             "Resource": [f"arn:aws:s3:::{bucket}/{k}" for k in refuse_all]},
        ],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    try:
        outcome = carry_out(plan, location=BackupLocation(backup_dir, bucket, PREFIX), client=client)
    finally:
        client.delete_bucket_policy(Bucket=bucket)

    assert len(outcome.errors) == 4 and all("AccessDenied" in e for e in outcome.errors)
    local = {p.name for p in backup_dir.iterdir()}
    # Refused delete, copy still readable offsite: the local copy may go (S3 still protects it).
    for d in (6, 7):
        assert names[d].filename not in local
    # Refused delete and unreadable: offsite status unknown, so the local copy and its sidecar stay.
    for d in (8, 9):
        assert names[d].filename in local and names[d].filename + ".sha256" in local
    for d in (5, 10, 11, 12, 13):
        assert names[d].filename not in local
    for d in range(0, 5):
        assert names[d].filename in local
    keys = {o.key for o in list_objects(client, BackupLocation(backup_dir, bucket, PREFIX))}
    assert set(refuse_delete + refuse_all) <= keys
    deleted_s3 = {i.name for i in outcome.deleted if i.location == "s3"}
    assert_no_local_backup_lost({names[d].filename for d in range(14)} - local, names, client, bucket, deleted_s3)
    kept = {i.name: why for i, why in outcome.skipped if i.location == "local"}
    assert "offsite status unknown" in kept[names[8].filename]


def test_server_stops_between_delete_batches(tmp_path):
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    server = LocalS3().start()
    try:
        client = fast_client(server)
        bucket = f"loyalty-ret-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=bucket)
        names = make_backups(backup_dir, client, bucket, range(0, 12))
        plan = make_plan(backup_dir, client, bucket, names)
        to_delete = [i for i in plan.deletions_at("s3")]
        assert len(to_delete) == 7 * 2  # objects and their .sha256 sidecars

        # After the first DeleteObjects answer, the endpoint goes away for real.
        batches = []

        def stop_after_first_batch(**kwargs):
            batches.append(kwargs.get("http_response"))
            if len(batches) == 1:
                server.stop()

        client.meta.events.register("after-call.s3.DeleteObjects", stop_after_first_batch)
        outcome = carry_out(plan, location=BackupLocation(backup_dir, bucket, PREFIX), client=client, batch_size=3)
    finally:
        server.stop()

    assert any("failed as a whole" in e for e in outcome.errors)
    s3_deleted = {i.backup for i in outcome.deleted if i.location == "s3"}
    assert len(s3_deleted) == 3  # the first batch only
    local = {p.name for p in backup_dir.iterdir()}
    for d in range(5, 12):
        name = names[d].filename
        if name in s3_deleted:
            assert name not in local and name + ".sha256" not in local  # retired everywhere, as planned
        else:
            assert name in local and name + ".sha256" in local  # S3 state unknown: nothing local removed
    for d in range(0, 5):
        assert names[d].filename in local


def test_dry_run_touches_nothing(tmp_path, s3_server):
    client = fast_client(s3_server)
    bucket = f"loyalty-ret-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    names = make_backups(backup_dir, client, bucket, range(0, 8))
    plan = make_plan(backup_dir, client, bucket, names)
    before_local, before_keys = sorted(os.listdir(backup_dir)), {o.key for o in list_objects(client, BackupLocation(backup_dir, bucket, PREFIX))}
    outcome = carry_out(plan, location=BackupLocation(backup_dir, bucket, PREFIX), client=client, dry_run=True)
    assert outcome.deleted and outcome.s3_requests == 0
    assert sorted(os.listdir(backup_dir)) == before_local
    assert {o.key for o in list_objects(client, BackupLocation(backup_dir, bucket, PREFIX))} == before_keys


def test_blocked_plan_cannot_be_carried_out(tmp_path):
    from loyalty_ops.lib.retention.cleanup import RetentionBlocked

    plan = plan_retention(Inventory(DB, (), None, PREFIX), Evidence(), RetentionPolicy(), NOW)
    with pytest.raises(RetentionBlocked):
        carry_out(plan, location=BackupLocation(tmp_path))


def test_a_plan_that_was_not_re_verified_cannot_be_carried_out(tmp_path, s3_server):
    """The floor's files re-hashed and the offsite copies re-checked are a precondition of any deletion."""
    from loyalty_ops.lib.retention.cleanup import RetentionBlocked

    client = fast_client(s3_server)
    bucket = f"loyalty-ret-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    names = make_backups(backup_dir, client, bucket, range(0, 8))
    inventory = Inventory(DB, scan_backup_dir(backup_dir), list_objects(client, BackupLocation(backup_dir, bucket, PREFIX)), PREFIX)
    evidence = Evidence(integrity={n.filename: IntegrityResult(True) for n in names.values()})
    unverified = plan_retention(inventory, evidence, RetentionPolicy(keep_days=5, min_keep=3), NOW)
    assert unverified.deletions and not unverified.reverified
    assert "Not re-verified yet" in unverified.markdown()
    before = sorted(os.listdir(backup_dir))
    with pytest.raises(RetentionBlocked, match="not re-verified"):
        carry_out(unverified, location=BackupLocation(backup_dir, bucket, PREFIX), client=client)
    assert sorted(os.listdir(backup_dir)) == before

"""Retention at scale: 100,000 objects on a local S3 endpoint (moto's server, over HTTP).

Counts the S3 requests retention makes (botocore ``before-send`` event hooks count every HTTP request,
retries included) and times the planning. Targets (issue 7): list + delete requests <= 2 * ceil(n / 1000),
planning under 1 s.

Setup writes the objects straight into moto's in-process store (100,000 PUTs over HTTP would take
minutes and are not what is measured); everything retention does goes over HTTP like against AWS.
The baseline, computed in the same run, is what per-key deletes (``DeleteObject`` per key, the way a
``find -delete`` port would work) would cost in requests.

    .venv/bin/python benchmarks/retention.py [--objects 100000] [--keep-days 30] [--gfs 7,4,12]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.s3_endpoint import LocalS3  # noqa: E402
from loyalty_ops.lib.backup.naming import backup_name, parse_backup_name  # noqa: E402
from loyalty_ops.lib.retention.cleanup import carry_out  # noqa: E402
from loyalty_ops.lib.retention.gates import apply_reverification  # noqa: E402
from loyalty_ops.lib.retention.reverify import reverify  # noqa: E402
from loyalty_ops.lib.backup.inventory import list_multipart_uploads, list_objects  # noqa: E402
from loyalty_ops.lib.backup.location import BackupLocation  # noqa: E402
from loyalty_ops.lib.retention.plan import Evidence, IntegrityResult, Inventory, RetentionPolicy, plan_retention  # noqa: E402

DB = "loyalty"
PREFIX = "backups/"


def populate(bucket: str, n: int, now: datetime) -> tuple[int, dict]:
    """Hourly backups (file + .sha256 + .manifest.json) back from ``now`` until there are n objects
    (the last one or two are another database's, which must be left alone)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    integrity = {}
    written = 0
    hour = 0
    body = b"b" * 64
    digest = hashlib.sha256(body).hexdigest()
    while written + 3 <= n:
        name = backup_name(DB, now - timedelta(hours=hour, minutes=10))
        key = name.s3_key(PREFIX)
        # As offsite_backup_copy leaves it: sha256 in the object's metadata, a sha256sum-style sidecar.
        backend.put_object(bucket, key, body).set_metadata({"x-amz-meta-sha256": digest})
        backend.put_object(bucket, key + ".sha256", f"{digest}  {name.filename}\n".encode())
        backend.put_object(bucket, key + ".manifest.json", b"m" * 32)
        if hour < 400:
            integrity[name.filename] = IntegrityResult(True)
        written += 3
        hour += 1
    while written < n:
        other = backup_name("otherdb", now - timedelta(hours=written))
        backend.put_object(bucket, other.s3_key(PREFIX), b"o")
        written += 1
    return written, integrity


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--keep-days", type=float, default=30)
    parser.add_argument("--gfs", default="0,0,0", help="daily,weekly,monthly counts")
    parser.add_argument("--repeat", type=int, default=5, help="cold planning runs (the machine may be shared)")
    args = parser.parse_args()
    daily, weekly, monthly = (int(x) for x in args.gfs.split(","))
    policy = RetentionPolicy(keep_days=args.keep_days, min_keep=3, gfs_daily=daily, gfs_weekly=weekly, gfs_monthly=monthly)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    load = os.getloadavg()

    with LocalS3() as server, tempfile.TemporaryDirectory() as backup_dir:
        client = server.client()
        bucket = f"loyalty-bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        started = time.perf_counter()
        n, integrity = populate(bucket, args.objects, now)
        print(f"setup: {n:,} objects written into moto in {time.perf_counter() - started:.1f} s")

        requests: Counter = Counter()

        def count(event_name: str, **_kwargs) -> None:
            requests[event_name.rsplit(".", 1)[-1]] += 1

        client.meta.events.register("before-send.s3", count)

        t0 = time.perf_counter()
        location = BackupLocation(Path(backup_dir), bucket, PREFIX)
        remote = list_objects(client, location)
        multipart = list_multipart_uploads(client, location)
        list_s = time.perf_counter() - t0
        assert len(remote) == n, (len(remote), n)

        inventory = Inventory(DB, (), remote, PREFIX, multipart, None)
        evidence = Evidence(integrity=integrity)
        walls, cpus = [], []
        for _ in range(args.repeat):
            parse_backup_name.cache_clear()  # cold: no name parsed before
            t0, c0 = time.perf_counter(), time.process_time()
            plan = plan_retention(inventory, evidence, policy, now, tz=ZoneInfo("Africa/Harare"))
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        plan_s, plan_cpu = walls[0], cpus[0]
        t0 = time.perf_counter()
        again = plan_retention(inventory, evidence, policy, now, tz=ZoneInfo("Africa/Harare"))
        plan_warm_s = time.perf_counter() - t0
        assert again == plan
        t0 = time.perf_counter()
        markdown = plan.markdown()
        md_s = time.perf_counter() - t0
        # Re-verify what the plan relies on (here: the floor's objects, HEAD + sidecar GET each), as the job does.
        reverify_stats: dict = {}
        plan = apply_reverification(
            plan, reverify(plan.to_reverify, location=location, client=client, stats=reverify_stats)
        )
        assert not plan.blocked, plan.blocked
        to_delete = len(plan.deletions_at("s3"))

        t0 = time.perf_counter()
        outcome = carry_out(plan, location=location, client=client)
        delete_s = time.perf_counter() - t0
        client.meta.events.unregister("before-send.s3", count)
        left = list_objects(client, BackupLocation(Path(backup_dir), bucket, ""))
        gc.collect()

    list_requests = requests["ListObjectsV2"]
    delete_requests = requests["DeleteObjects"]
    objects_requests = list_requests + delete_requests
    target = 2 * math.ceil(n / 1000)
    naive = list_requests + to_delete
    kept = sum(1 for i in plan.items if i.location == "s3" and i.action == "keep")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"policy: {policy.describe()}")
    print(f"objects: {n:,}; planned deletes {to_delete:,}; kept {kept:,}; ignored {len(plan.ignored_remote):,}")
    print(f"requests by operation: {dict(sorted(requests.items()))}")
    print(
        f"list + delete requests: {objects_requests} (ListObjectsV2 {list_requests} + DeleteObjects {delete_requests}); "
        f"target <= 2*ceil(n/1000) = {target}: {'OK' if objects_requests <= target else 'MISSED'}"
    )
    print(f"plus ListMultipartUploads: {requests['ListMultipartUploads']} (one page; separate API)")
    print(f"baseline (per-key DeleteObject): {naive:,} requests; ratio batched/baseline = {objects_requests / naive:.4f}")
    best = min(walls)
    print(
        f"planning (cold, {len(walls)} runs): first {plan_s:.3f} s wall / {plan_cpu:.3f} s CPU; best {best:.3f} s wall; "
        f"median {sorted(walls)[len(walls) // 2]:.3f} s wall; CPU min {min(cpus):.3f} s; warm cache {plan_warm_s:.3f} s wall"
    )
    print(f"planning target < 1 s: {'OK' if best < 1 else 'MISSED'} (best wall), {'OK' if min(cpus) < 1 else 'MISSED'} (CPU)")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"markdown: {md_s:.3f} s, {len(markdown):,} chars")
    print(f"re-verification: {len(plan.reverification)} copies, {reverify_stats.get('s3_requests', 0)} requests, "
          f"{reverify_stats.get('seconds', 0.0):.3f} s")
    print(f"listing: {list_s:.2f} s; deleting: {delete_s:.2f} s; errors: {len(outcome.errors)}")
    print(f"after: {len(left):,} objects left (expected {kept + len(plan.ignored_remote):,})")
    ok = objects_requests <= target and not outcome.errors and len(left) == kept + len(plan.ignored_remote)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

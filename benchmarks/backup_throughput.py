"""Benchmark: our nightly backup against the floor and against the guide's way, in one run.

  (a) the floor:        pg_dump -Fc -Z0 > file
  (b) the guide's way:  pg_dump -Fc | gzip > file; gunzip -t file; upload the file to the same S3 endpoint
  (c) nightly_backup_job: dump, compress, hash, blocking checks and verified upload (run in a child
      process so its peak RSS is its own)

Prints each wall time, peak RSS, output sizes and the ratios c/a, c/b, and size(c)/size(pg_dump -Fc).
Targets (issue 2): c/a <= 1.3, c/b <= 0.6, size ratio <= 1.4, peak RSS of the backup <= 150 MB.

Then the verification pass on (c)'s file, with and without the walk of the whole archive (every data
block to its end marker), alternated over --verify-rounds rounds; the median of each, as a ratio to the
floor (a). Target (issue 12): the full read adds <= 0.15 x the floor to the pass.

    .venv/bin/python benchmarks/backup_throughput.py --size-mb 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import children_peak_rss_mb, moto_process, s3_client, sample_cluster, timed_shell

CHILD_SCRIPT = r"""
import json, os, resource, sys, time
import dagster as dg
from dagster_aws.s3 import S3Resource
from loyalty_ops.defs.backups.assets import database_backup
from loyalty_ops.defs.backups.offsite_copy import offsite_backup_copy
from loyalty_ops.defs.backups.checks import BACKUP_CHECKS
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
args = json.loads(sys.argv[1])
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
resources = {
    "postgres": PostgresTarget(host="127.0.0.1", port=args["port"], user="postgres", password=os.environ["PGPASSWORD"], database="loyalty"),
    "backup_storage": BackupStorage(backup_dir=args["backup_dir"]),
    "offsite": OffsiteStorage(s3=S3Resource(endpoint_url=args["endpoint"], region_name="us-east-1",
        aws_access_key_id="local-access-key", aws_secret_access_key="local-secret-key"), bucket=args["bucket"]),
}
with dg.instance_for_test(temp_dir=args["dagster_home"]) as instance:
    started = time.monotonic()
    # nightly_backup_job without its restore drill (measured by benchmarks/restore_drill.py): dump,
    # compress, hash, the blocking checks and the upload, in one process as the job runs them.
    result = dg.materialize(
        [database_backup, offsite_backup_copy, *BACKUP_CHECKS], resources=resources, instance=instance
    )
    elapsed = time.monotonic() - started
assert result.success
mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
steps = {}
for event in result.all_events:
    if event.event_type_value == "STEP_SUCCESS":
        steps[event.step_key] = event.event_specific_data.duration_ms / 1000
print(json.dumps({
    "elapsed_s": elapsed,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_after_imports_mb": baseline,
    "bytes": mats["database_backup"]["bytes"].value,
    "steps": steps,
    "uploaded": "offsite_backup_copy" in mats,
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1000, help="sample database size on disk (default 1000)")
    parser.add_argument("--verify-rounds", type=int, default=3, help="rounds of the verification comparison")
    args = parser.parse_args()

    with sample_cluster(args.size_mb) as cluster, moto_process() as endpoint, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {"PATH": f"{cluster.bin_dir}:/usr/bin:/bin", **cluster.env("loyalty")}
        client = s3_client(endpoint)
        client.create_bucket(Bucket="bench-guide")
        client.create_bucket(Bucket="bench-ours")
        timed_shell("pg_dump -Fc -Z0 > /dev/null", env)  # warm the page cache

        floor = timed_shell(f"pg_dump -Fc -Z0 > {work}/floor.dump", env)
        floor_bytes = (work / "floor.dump").stat().st_size
        default_fc = timed_shell(f"pg_dump -Fc > {work}/default.dump", env)
        default_bytes = (work / "default.dump").stat().st_size
        for leftover in ("floor.dump", "default.dump"):
            (work / leftover).unlink()

        guide_dump = timed_shell(f"pg_dump -Fc | gzip > {work}/guide.dump.gz", env)
        guide_test = timed_shell(f"gunzip -t {work}/guide.dump.gz", env)
        started = time.monotonic()
        client.upload_file(str(work / "guide.dump.gz"), "bench-guide", "backups/guide.dump.gz")
        guide_upload = time.monotonic() - started
        guide_bytes = (work / "guide.dump.gz").stat().st_size
        (work / "guide.dump.gz").unlink()
        guide = guide_dump + guide_test + guide_upload

        child_args = {
            "port": cluster.port,
            "backup_dir": str(work / "ours"),
            "endpoint": endpoint,
            "bucket": "bench-ours",
            "dagster_home": str(work / "dagster_home"),
        }
        (work / "dagster_home").mkdir()
        started = time.monotonic()
        child = subprocess.run(
            [sys.executable, "-c", CHILD_SCRIPT, json.dumps(child_args)],
            env={**os.environ, "PGPASSWORD": cluster.password, "DAGSTER_HOME": str(work / "dagster_home")},
            capture_output=True, text=True, cwd=str(work),
        )
        process_wall = time.monotonic() - started
        if child.returncode != 0:
            print(child.stdout[-3000:], child.stderr[-5000:])
            return 1
        ours = json.loads(child.stdout.strip().splitlines()[-1])
        backup_file = next((work / "ours").glob("loyalty_*.dump.gz"))
        verify = verification_cost(backup_file, args.verify_rounds)

    c = ours["elapsed_s"]
    print()
    print("| run | wall time (s) | output (MB) |")
    print("|---|---:|---:|")
    print(f"| (a) pg_dump -Fc -Z0 > file (floor) | {floor:.2f} | {floor_bytes / 1e6:.0f} |")
    print(f"| pg_dump -Fc (default compression) | {default_fc:.2f} | {default_bytes / 1e6:.0f} |")
    print(f"| (b) guide: pg_dump -Fc \\| gzip ({guide_dump:.2f}) + gunzip -t ({guide_test:.2f}) + upload ({guide_upload:.2f}) | {guide:.2f} | {guide_bytes / 1e6:.0f} |")
    print(f"| (c) nightly_backup_job (in-run time; process incl. start-up {process_wall:.2f}) | {c:.2f} | {ours['bytes'] / 1e6:.0f} |")
    print()
    print("steps of (c):", ", ".join(f"{k} {v:.2f}s" for k, v in ours["steps"].items()))
    print(f"c/a = {c / floor:.2f}   (target <= 1.3)")
    print(f"c/b = {c / guide:.2f}   (target <= 0.6)")
    print(f"size(c)/size(pg_dump -Fc) = {ours['bytes'] / default_bytes:.2f}   (target <= 1.4)")
    print(
        f"peak RSS of (c): {ours['peak_rss_mb']:.0f} MB, of which {ours['rss_after_imports_mb']:.0f} MB is the "
        f"interpreter with Dagster imported: the backup itself added {ours['peak_rss_mb'] - ours['rss_after_imports_mb']:.0f} MB"
        f"   (target <= 150 MB)"
    )
    print(f"largest child process of the benchmark (any): {children_peak_rss_mb():.0f} MB")
    print(f"uploaded: {ours['uploaded']}")
    print()
    print(f"verification pass on {backup_file.name} (median of {args.verify_rounds} rounds, alternated):")
    print(f"  decompress + hash:                      {verify['without']:.2f} s = {verify['without'] / floor:.3f} x floor")
    print(f"  decompress + hash + whole-archive read: {verify['with']:.2f} s = {verify['with'] / floor:.3f} x floor")
    added = verify["with"] - verify["without"]
    print(f"  the full read adds {added:.2f} s = {added / floor:.3f} x floor   (target <= 0.15)"
          f"   [{verify['blocks']} data blocks, {verify['archive_mb']:.0f} MB of archive]")
    return 0


def verification_cost(path: Path, rounds: int) -> dict:
    """The integrity pass on one file, with and without the archive walk, alternated; medians in seconds."""
    from statistics import median

    from loyalty_ops.lib.backup.integrity import inspect_archive

    with_walk, without_walk = [], []
    blocks = archive_mb = 0
    for _ in range(rounds):
        started = time.monotonic()
        inspection = inspect_archive(path, read_archive=False)
        without_walk.append(time.monotonic() - started)
        started = time.monotonic()
        inspection = inspect_archive(path)
        with_walk.append(time.monotonic() - started)
        assert inspection.archive is not None, inspection.archive_error
        blocks, archive_mb = inspection.archive.data_blocks, inspection.archive.archive_bytes / 1e6
    return {"with": median(with_walk), "without": median(without_walk), "blocks": blocks, "archive_mb": archive_mb}


if __name__ == "__main__":
    sys.exit(main())

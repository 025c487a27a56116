"""Benchmark: our nightly backup against the floor and against the guide's way, in one run.

  (a) the floor:        pg_dump -Fc -Z0 > file
  (b) the guide's way:  pg_dump -Fc | gzip > file; gunzip -t file; upload the file to the same S3 endpoint
  (c) nightly_backup_job: dump, compress, hash, row counts, blocking checks and verified upload (run in a
      child process so its peak RSS is its own; the restore drill is benchmarks/restore_drill.py's)
  (d) the same without the offsite copy: moto, the local S3 stand-in, is a single Python process on the
      same two cores and its speed dominates the upload and its verification, so (d) is the backup's own
      cost and the S3 steps of (c) are printed apart

Prints each wall time, peak RSS, output sizes and the ratios c/a, c/b, and size(c)/size(pg_dump -Fc).
Targets: d/a and c/a <= 1.3 (issue 16), c/b <= 0.6, size ratio <= 1.4, the backup's own memory (peak RSS
minus the interpreter with Dagster imported) <= 64 MB.

Then the verification pass on (c)'s file, with and without the walk of the whole archive (every data
block to its end marker), alternated over --verify-rounds rounds; the median of each, as a ratio to the
floor (a). Target (issue 12): the full read adds <= 0.15 x the floor to the pass.

    .venv/bin/python benchmarks/backup_throughput.py --size-mb 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import children_peak_rss_mb, machine_line, moto_process, run_backup_child, s3_client, sample_cluster, timed_shell

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=1000, help="sample database size on disk (default 1000)")
    parser.add_argument("--verify-rounds", type=int, default=3, help="rounds of the verification comparison")
    parser.add_argument("--cluster-dir", type=Path, help="keep the sample cluster here and reuse it in later runs")
    args = parser.parse_args()

    with sample_cluster(args.size_mb, cluster_dir=args.cluster_dir) as cluster, moto_process() as endpoint, tempfile.TemporaryDirectory() as tmp:
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

        alone = run_backup_child(cluster, work, label="alone")
        ours = run_backup_child(cluster, work, endpoint=endpoint, bucket="bench-ours", label="ours")
        process_wall = ours["process_wall_s"]
        backup_file = next((work / "backups_ours").glob("loyalty_*.dump.gz"))
        verify = verification_cost(backup_file, args.verify_rounds)

    c = ours["elapsed_s"]
    d = alone["elapsed_s"]
    print()
    print(f"machine: {machine_line()}")
    print("| run | wall time (s) | output (MB) |")
    print("|---|---:|---:|")
    print(f"| (a) pg_dump -Fc -Z0 > file (floor) | {floor:.2f} | {floor_bytes / 1e6:.0f} |")
    print(f"| pg_dump -Fc (default compression) | {default_fc:.2f} | {default_bytes / 1e6:.0f} |")
    print(f"| (b) guide: pg_dump -Fc \\| gzip ({guide_dump:.2f}) + gunzip -t ({guide_test:.2f}) + upload ({guide_upload:.2f}) | {guide:.2f} | {guide_bytes / 1e6:.0f} |")
    print(f"| (c) nightly_backup_job (in-run time; process incl. start-up {process_wall:.2f}) | {c:.2f} | {ours['bytes'] / 1e6:.0f} |")
    print(f"| (d) the same without the offsite copy | {d:.2f} | {alone['bytes'] / 1e6:.0f} |")
    print()
    print("steps of (d):", ", ".join(f"{k} {v:.2f}s" for k, v in alone["steps"].items()))
    print("steps of (c):", ", ".join(f"{k} {v:.2f}s" for k, v in ours["steps"].items()))
    s3_steps = {k: v for k, v in ours["steps"].items() if k.startswith("offsite")}
    print(f"moto-dominated: the offsite copy and its verification {sum(s3_steps.values()):.2f} s, and the streamed "
          f"parts during the dump (database_backup {ours['steps'].get('database_backup', 0):.2f} s with S3, "
          f"{alone['steps'].get('database_backup', 0):.2f} s without)")
    print(f"rows counted from: {alone['meta'].get('row_counts_source')}")
    print(f"d/a = {d / floor:.2f}   (the backup without S3; target <= 1.3)")
    print(f"c/a = {c / floor:.2f}   (with the upload to moto; target <= 1.3)")
    print(f"c/b = {c / guide:.2f}   (target <= 0.6)")
    print(f"size(c)/size(pg_dump -Fc) = {ours['bytes'] / default_bytes:.2f}   (target <= 1.4)")
    print(f"read back while written: the read-back ran {alone['meta'].get('read_back_wait_s', 0):.2f} s past the last "
          f"byte written in (d), {ours['meta'].get('read_back_wait_s', 0):.2f} s in (c)")
    for label, run in (("(c)", ours), ("(d)", alone)):
        print(
            f"peak RSS of {label}: {run['peak_rss_mb']:.0f} MB, of which {run['rss_after_imports_mb']:.0f} MB is the "
            f"interpreter with Dagster imported: the backup itself added {run['peak_rss_mb'] - run['rss_after_imports_mb']:.0f} MB"
            f"   (target <= 64 MB)"
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
